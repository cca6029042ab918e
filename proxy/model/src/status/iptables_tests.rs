//! Decoding our chains: the renderer's own output read back (every frontend kind, affinity,
//! source ranges, Local policy without a local endpoint, a service without endpoints), and
//! real `iptables-save` output, which orders options its own way.
use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::iptables::chains::{ext_chain, fw_chain, sep_chain, svc_chain};
use crate::iptables::restore::{full_sync_inputs, Strategy};
use crate::iptables::rule_set::RuleConfig;
use crate::iptables::rules::{base_rules, port_rules};
use crate::{Endpoint, Protocol, ServicePort, ServicePortKey, TrafficPolicy};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn key(name: &str, port_name: &str, protocol: Protocol) -> ServicePortKey {
    ServicePortKey {
        namespace: "demo".into(),
        name: name.into(),
        port_name: port_name.into(),
        protocol,
    }
}

fn ep(addr: &str, port: u16) -> Endpoint {
    Endpoint {
        ip: ip(addr),
        port,
        ready: true,
        serving: true,
        terminating: false,
        local: false,
        node_name: Some("other".into()),
        hints: None,
    }
}

fn port(k: ServicePortKey, cluster_ip: &str, port: u16, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        key: k,
        port,
        cluster_ips: vec![ip(cluster_ip)],
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        endpoints,
        topology: Default::default(),
        frontends: vec![],
    }
}

/// The ports of the round trip.
fn ports() -> Vec<ServicePort> {
    let mut web = port(
        key("web", "http", Protocol::Tcp),
        "198.18.128.10",
        80,
        vec![
            ep("198.19.1.5", 8080),
            ep("198.19.2.6", 8080),
            ep("198.19.2.7", 8080),
        ],
    );
    web.session_affinity_timeout = Some(10800);
    let mut lb = port(
        key("lb", "https", Protocol::Tcp),
        "198.18.128.20",
        443,
        vec![ep("198.19.1.5", 8443), ep("198.19.2.6", 8443)],
    );
    lb.node_port = Some(30443);
    lb.external_ips = vec![ip("198.18.200.1")];
    lb.load_balancer_ips = vec![ip("203.0.113.50")];
    lb.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().expect("cidr")];
    let mut local = port(
        key("loc", "", Protocol::Udp),
        "198.18.128.30",
        53,
        vec![ep("198.19.2.8", 5353)],
    );
    local.node_port = Some(30053);
    local.external_traffic_policy = TrafficPolicy::Local;
    let empty = port(
        key("empty", "http", Protocol::Tcp),
        "198.18.128.11",
        80,
        vec![],
    );
    vec![web, lb, local, empty]
}

/// What a full sync of `ports` writes, with the jumps from the built-in chains, as one text.
fn rendered(ports: &[ServicePort], with_jumps: bool) -> String {
    let cfg = RuleConfig {
        cluster_cidrs: vec!["198.19.0.0/16".parse().expect("cidr")],
        ..RuleConfig::default()
    };
    let base = base_rules(&cfg);
    let rules: BTreeMap<ServicePortKey, _> = ports
        .iter()
        .map(|p| (p.key.clone(), port_rules(p, &cfg)))
        .collect();
    let mut text = full_sync_inputs(
        &base,
        rules,
        &Default::default(),
        Strategy::Single,
        &[],
        |_, _| {},
    )
    .concat();
    if with_jumps {
        for (chain, args) in &base.jumps {
            text.push_str(&format!(
                "*{}\n-A {} {}\nCOMMIT\n",
                chain.table, chain.chain, args
            ));
        }
    }
    text
}

/// (service, type, frontend, backends) of each row.
fn summary(rows: &[ServiceRow]) -> Vec<(String, &'static str, String, Vec<String>)> {
    rows.iter()
        .map(|r| {
            let address = r.address.map(|a| a.to_string()).unwrap_or("*".into());
            (
                r.service.clone().unwrap_or_default(),
                r.kind.as_str(),
                format!("{address}:{}/{}", r.port, r.protocol),
                r.backends
                    .iter()
                    .map(|b| format!("{}:{} {}", b.address, b.port, b.probability))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn the_renderers_output_reads_back_as_the_ports() {
    let ports = ports();
    let decoded = decode(&Saved::parse(&rendered(&ports, true)));
    assert_eq!(decoded.notes, Vec::<String>::new());
    let s = |x: &str| x.to_owned();
    let third = "0.333333";
    let lb_backends = || vec![s("198.19.1.5:8443 0.5"), s("198.19.2.6:8443 0.5")];
    assert_eq!(
        summary(&decoded.services),
        [
            (
                s("demo/empty:http/TCP"),
                "ClusterIP",
                s("198.18.128.11:80/TCP"),
                vec![]
            ),
            (
                s("demo/lb:https/TCP"),
                "ClusterIP",
                s("198.18.128.20:443/TCP"),
                lb_backends()
            ),
            (
                s("demo/lb:https/TCP"),
                "NodePort",
                s("*:30443/TCP"),
                lb_backends()
            ),
            (
                s("demo/lb:https/TCP"),
                "ExternalIP",
                s("198.18.200.1:443/TCP"),
                lb_backends()
            ),
            (
                s("demo/lb:https/TCP"),
                "LoadBalancer",
                s("203.0.113.50:443/TCP"),
                lb_backends()
            ),
            (
                s("demo/loc/UDP"),
                "ClusterIP",
                s("198.18.128.30:53/UDP"),
                vec![s("198.19.2.8:5353 1")]
            ),
            (s("demo/loc/UDP"), "NodePort", s("*:30053/UDP"), vec![]),
            (
                s("demo/web:http/TCP"),
                "ClusterIP",
                s("198.18.128.10:80/TCP"),
                vec![
                    format!("198.19.1.5:8080 {third}"),
                    format!("198.19.2.6:8080 {third}"),
                    format!("198.19.2.7:8080 {third}"),
                ]
            ),
        ]
    );
    let rows = &decoded.services;
    let [empty, lb_cluster, lb_node, lb_external, lb_balancer, loc_cluster, loc_node, web] =
        rows.as_slice()
    else {
        panic!("{rows:?}")
    };
    assert_eq!(empty.verdict, Some(Verdict::Reject));
    assert_eq!(empty.chain, None);
    assert_eq!(
        lb_cluster.chain.as_deref(),
        Some(svc_chain(&ports[1].key).as_str())
    );
    assert!(
        !lb_cluster.masquerade,
        "cluster IP traffic: not the EXT chain's"
    );
    for external in [lb_node, lb_external] {
        assert_eq!(
            external.chain.as_deref(),
            Some(ext_chain(&ports[1].key).as_str())
        );
        assert!(external.masquerade);
        assert!(external.source_ranges.is_empty());
    }
    assert_eq!(
        lb_balancer.chain.as_deref(),
        Some(fw_chain(&ports[1].key).as_str())
    );
    assert_eq!(lb_balancer.source_ranges, ["192.0.2.0/24"]);
    assert!(lb_balancer.masquerade);
    assert_eq!(loc_cluster.verdict, None);
    assert_eq!(
        loc_node.verdict,
        Some(Verdict::Drop),
        "Local policy without a local endpoint"
    );
    assert!(!loc_node.masquerade);
    assert_eq!(web.affinity_timeout_seconds, Some(10800));
    assert_eq!(
        web.backends[0].chain.as_deref(),
        Some(sep_chain(&ports[0].key, ip("198.19.1.5"), 8080).as_str())
    );

    let entries: Vec<(String, String, bool)> = decoded
        .backends
        .iter()
        .map(|b| {
            (
                b.service.clone().unwrap_or_default(),
                format!("{}:{}", b.address, b.port),
                b.in_use,
            )
        })
        .collect();
    assert_eq!(entries.len(), 6, "{entries:?}");
    assert!(entries.iter().all(|(_, _, used)| *used), "{entries:?}");
    assert!(entries.contains(&(s("demo/loc/UDP"), s("198.19.2.8:5353"), true)));
    let nat = decoded
        .chains
        .iter()
        .find(|c| c.table == "nat")
        .expect("nat");
    assert!(nat.chains > 10 && nat.rules > nat.chains, "{nat:?}");
}

#[test]
fn missing_jumps_from_the_built_in_chains_are_noted() {
    let decoded = decode(&Saved::parse(&rendered(&ports(), false)));
    assert_eq!(
        decoded.notes,
        [
            "nat OUTPUT does not jump to SWY-SERVICES: its rules are not in use there",
            "nat PREROUTING does not jump to SWY-SERVICES: its rules are not in use there",
        ]
    );
}

#[test]
fn nothing_of_ours_decodes_to_nothing() {
    let saved =
        Saved::parse("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n");
    assert!(!saved.has_our_chains());
    let decoded = decode(&saved);
    assert!(decoded.services.is_empty() && decoded.backends.is_empty() && decoded.notes.is_empty());
}

/// iptables-legacy-save's own order and number format (a probability stored as a 32-bit
/// fraction prints as 0.33333333349), and a chain jumped to that someone deleted.
#[test]
fn real_save_output_is_read_by_option_name() {
    let save = r#"# Generated by iptables-save v1.8.9
*nat
:PREROUTING ACCEPT [0:0]
:SWY-SEP-BBBB - [0:0]
:SWY-SEP-CCCC - [0:0]
:SWY-SEP-DDDD - [0:0]
:SWY-SERVICES - [0:0]
:SWY-SVC-AAAA - [0:0]
-A PREROUTING -m comment --comment "switchyard service portals" -j SWY-SERVICES
-A SWY-SEP-BBBB -s 198.19.1.11/32 -m comment --comment "demo/web:http" -j SWY-MARK-MASQ
-A SWY-SEP-BBBB -p tcp -m comment --comment "demo/web:http" -m recent --set --name SWY-SEP-BBBB --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 198.19.1.11:8080
-A SWY-SEP-CCCC -p tcp -m comment --comment "demo/web:http" -m tcp -j DNAT --to-destination 198.19.2.11:8080
-A SWY-SEP-DDDD -p tcp -m comment --comment "demo/web:http" -m tcp -j DNAT --to-destination 198.19.2.12:8080
-A SWY-SERVICES -d 198.18.128.10/32 -p tcp -m comment --comment "demo/web:http cluster IP" -m tcp --dport 80 -j SWY-SVC-AAAA
-A SWY-SERVICES -d 198.18.128.12/32 -p tcp -m comment --comment "demo/gone:http cluster IP" -m tcp --dport 80 -j SWY-SVC-GONE
-A SWY-SVC-AAAA -m comment --comment "demo/web:http -> 198.19.1.11:8080" -m recent --rcheck --seconds 600 --reap --name SWY-SEP-BBBB --mask 255.255.255.255 --rsource -j SWY-SEP-BBBB
-A SWY-SVC-AAAA -m comment --comment "demo/web:http -> 198.19.1.11:8080" -m statistic --mode random --probability 0.33333333349 -j SWY-SEP-BBBB
-A SWY-SVC-AAAA -m comment --comment "demo/web:http -> 198.19.2.11:8080" -m statistic --mode random --probability 0.50000000000 -j SWY-SEP-CCCC
-A SWY-SVC-AAAA -m comment --comment "demo/web:http -> 198.19.2.12:8080" -j SWY-SEP-DDDD
COMMIT
*filter
:SWY-SERVICES - [0:0]
-A SWY-SERVICES -d 198.18.128.11/32 -p tcp -m comment --comment "demo/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with tcp-reset
COMMIT
"#;
    let decoded = decode(&Saved::parse(save));
    let summary = summary(&decoded.services);
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert_eq!(summary[0].0, "demo/empty:http/TCP");
    assert_eq!(summary[1].0, "demo/gone:http/TCP");
    assert!(summary[1].3.is_empty());
    assert_eq!(
        summary[2].3,
        [
            "198.19.1.11:8080 0.333333",
            "198.19.2.11:8080 0.333333",
            "198.19.2.12:8080 0.333333"
        ]
    );
    assert_eq!(decoded.services[2].affinity_timeout_seconds, Some(600));
    assert_eq!(
        decoded.notes,
        [
            "SWY-SVC-GONE is jumped to but does not exist",
            "nat OUTPUT does not jump to SWY-SERVICES: its rules are not in use there",
        ]
    );
}

#[test]
fn the_sctp_fallbacks_chains_read_back_under_their_own_names() {
    use crate::iptables::sctp_fallback;
    let cfg = RuleConfig {
        cluster_cidrs: vec!["198.19.0.0/16".parse().expect("cidr")],
        ..RuleConfig::default()
    };
    let mut sig = port(
        key("sig", "diameter", Protocol::Sctp),
        "198.18.128.38",
        3868,
        vec![ep("198.19.1.5", 13868), ep("198.19.2.6", 13868)],
    );
    sig.session_affinity_timeout = Some(10800);
    let base = sctp_fallback::base_rules(&cfg);
    let rules = BTreeMap::from([(sig.key.clone(), sctp_fallback::port_rules(&sig, &cfg))]);
    let mut text = full_sync_inputs(
        &base,
        rules,
        &Default::default(),
        Strategy::Single,
        &[],
        |_, _| {},
    )
    .concat();
    for (chain, args) in &base.jumps {
        text.push_str(&format!(
            "*{}\n-A {} {}\nCOMMIT\n",
            chain.table, chain.chain, args
        ));
    }
    // Nothing of it is iptables mode's.
    assert!(!decode(&Saved::parse(&text))
        .services
        .iter()
        .any(|r| r.service.is_some()));
    let decoded = decode_sctp_fallback(&text);
    assert_eq!(decoded.notes, Vec::<String>::new());
    let s = |x: &str| x.to_owned();
    assert_eq!(
        summary(&decoded.services),
        [(
            s("demo/sig:diameter/SCTP"),
            "ClusterIP",
            s("198.18.128.38:3868/SCTP"),
            vec![s("198.19.1.5:13868 0.5"), s("198.19.2.6:13868 0.5")]
        )]
    );
    let row = &decoded.services[0];
    assert_eq!(row.affinity_timeout_seconds, Some(10800));
    assert_eq!(
        row.chain.as_deref(),
        Some(sctp_fallback::fallback_name(&svc_chain(&sig.key)).as_str())
    );
    assert!(decoded
        .backends
        .iter()
        .all(|b| b.chain.as_deref().is_some_and(sctp_fallback::is_ours)));
    assert_eq!(decoded.backends.len(), 2);
}
