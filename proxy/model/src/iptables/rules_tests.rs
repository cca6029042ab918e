//! Tests of the rule generator: rule shapes per feature. The real kernel loads them in
//! `proxy/tests/iptables_kernel.rs`.
use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;
use crate::iptables::chains::{ext_chain, fw_chain, sep_chain, svc_chain, svl_chain};
use crate::{Endpoint, Frontend, FrontendKind, ServicePortKey};

// ---------------------------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------------------------

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn net(text: &str) -> IpNet {
    text.parse().expect("test CIDR")
}

fn key(name: &str, port_name: &str, protocol: Protocol) -> ServicePortKey {
    ServicePortKey {
        namespace: "demo".into(),
        name: name.into(),
        port_name: port_name.into(),
        protocol,
    }
}

/// A ready endpoint on another node.
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

fn local(mut e: Endpoint) -> Endpoint {
    e.local = true;
    e.node_name = Some("this".into());
    e
}

fn terminating(mut e: Endpoint) -> Endpoint {
    e.ready = false;
    e.terminating = true;
    e
}

fn not_serving(mut e: Endpoint) -> Endpoint {
    e.ready = false;
    e.serving = false;
    e.terminating = true;
    e
}

/// demo/web:http TCP 198.18.128.10:80 with the given endpoints.
fn web(endpoints: Vec<Endpoint>) -> ServicePort {
    let k = key("web", "http", Protocol::Tcp);
    port_with(k, "198.18.128.10", 80, endpoints)
}

fn port_with(k: ServicePortKey, cluster_ip: &str, port: u16, eps: Vec<Endpoint>) -> ServicePort {
    let mut p = ServicePort {
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
        endpoints: eps,
        topology: Default::default(),
        frontends: vec![],
    };
    refresh_frontends(&mut p);
    p
}

/// Keeps `frontends` consistent with the address fields (the generator does not read them,
/// but a realistic port has them).
fn refresh_frontends(p: &mut ServicePort) {
    let mut f: Vec<Frontend> = Vec::new();
    let with = |kind, ip, port| Frontend { kind, ip, port };
    f.extend(
        p.cluster_ips
            .iter()
            .map(|i| with(FrontendKind::ClusterIp, *i, p.port)),
    );
    if let Some(np) = p.node_port {
        f.push(with(FrontendKind::NodePort, ip("198.18.0.10"), np));
    }
    f.extend(
        p.external_ips
            .iter()
            .map(|i| with(FrontendKind::ExternalIp, *i, p.port)),
    );
    f.extend(
        p.load_balancer_ips
            .iter()
            .map(|i| with(FrontendKind::LoadBalancer, *i, p.port)),
    );
    f.sort();
    p.frontends = f;
}

/// A LoadBalancer service port with NodePort 30080, one external IP and one LB IP.
fn lb(eps: Vec<Endpoint>) -> ServicePort {
    let mut p = web(eps);
    p.node_port = Some(30080);
    p.external_ips = vec![ip("203.0.113.5")];
    p.load_balancer_ips = vec![ip("203.0.113.10")];
    refresh_frontends(&mut p);
    p
}

fn cfg() -> RuleConfig {
    RuleConfig {
        cluster_cidrs: vec![net("198.19.0.0/16")],
        masquerade_all: false,
        nodeport_cidrs: vec![],
        node_ips: vec![ip("198.18.0.10")],
        localhost_nodeports: false,
        family: Family::Ipv4,
    }
}

fn own<'a>(r: &'a PortRules, name: &str) -> &'a [Rule] {
    r.chains
        .get(&ChainRef::new(Table::Nat, name))
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("chain {name} missing in {r:#?}"))
}

fn has_own(r: &PortRules, name: &str) -> bool {
    r.chains.contains_key(&ChainRef::new(Table::Nat, name))
}

fn shared(r: &PortRules, table: Table, name: &str) -> Vec<String> {
    r.shared
        .iter()
        .filter(|(c, _)| c.table == table && c.chain == name)
        .map(|(_, rule)| rule.clone())
        .collect()
}

fn sep(p: &ServicePort, addr: &str, port: u16) -> String {
    sep_chain(&p.key, ip(addr), port)
}

/// Splits a rule like a shell would (double quotes only, which is all we emit).
fn words(rule: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in rule.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                }
                in_word = false;
            }
            _ => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return None;
    }
    if in_word {
        out.push(cur);
    }
    Some(out)
}

/// Basic syntax sanity: what iptables-restore would choke on before even parsing options.
fn assert_sane(rule: &str) {
    assert!(
        rule.starts_with('-'),
        "rule must start with an option: {rule:?}"
    );
    assert!(!rule.contains('\n') && !rule.contains('\\'), "{rule:?}");
    assert!(!rule.contains("  ") && !rule.ends_with(' '), "{rule:?}");
    let w = words(rule).unwrap_or_else(|| panic!("unbalanced quotes: {rule:?}"));
    for pair in w.windows(2) {
        if pair[0] == "-j" {
            assert!(pair[1].len() <= chains::MAX_CHAIN_NAME_LEN, "{rule:?}");
        }
        if pair[0] == "--comment" {
            assert!(pair[1].len() <= MAX_COMMENT_BYTES, "{rule:?}");
        }
    }
    assert!(
        w.iter().filter(|x| *x == "-j").count() <= 1,
        "at most one target: {rule:?}"
    );
}

fn assert_all_sane(r: &PortRules) {
    for rules in r.chains.values() {
        rules.iter().for_each(|x| assert_sane(x));
    }
    r.shared.iter().for_each(|(_, x)| assert_sane(x));
}

// ---------------------------------------------------------------------------------------------
// Cluster IP.
// ---------------------------------------------------------------------------------------------

#[test]
fn cluster_ip_dispatch_rule_shape() {
    let p = web(vec![ep("198.19.1.5", 8080)]);
    let r = port_rules(&p, &cfg());
    let svc = svc_chain(&p.key);
    assert_eq!(
        shared(&r, Table::Nat, SERVICES),
        vec![format!(
            "-m comment --comment \"demo/web:http cluster IP\" -d 198.18.128.10/32 -p tcp -m tcp --dport 80 -j {svc}"
        )]
    );
    assert!(r.shared.iter().all(|(c, _)| c.table == Table::Nat));
    assert_all_sane(&r);
}

#[test]
fn balancing_probabilities_follow_one_over_n_minus_i() {
    let cases: [(usize, &[&str]); 4] = [
        (1, &[]),
        (2, &["0.5000000000"]),
        (3, &["0.3333333333", "0.5000000000"]),
        (4, &["0.2500000000", "0.3333333333", "0.5000000000"]),
    ];
    for (n, expected) in cases {
        let eps = (0..n)
            .map(|i| ep(&format!("198.19.1.{}", i + 1), 8080))
            .collect();
        let p = web(eps);
        let r = port_rules(&p, &cfg());
        let rules = own(&r, &svc_chain(&p.key));
        // First the masquerade rule, then one rule per endpoint in endpoint order.
        assert_eq!(rules.len(), 1 + n, "{rules:#?}");
        let balancing = &rules[1..];
        let probs: Vec<&str> = balancing
            .iter()
            .filter_map(|r| r.split("--probability ").nth(1))
            .filter_map(|rest| rest.split(' ').next())
            .collect();
        assert_eq!(probs, expected, "n={n}");
        for (i, rule) in balancing.iter().enumerate() {
            let target = sep(&p, &format!("198.19.1.{}", i + 1), 8080);
            assert!(rule.ends_with(&format!("-j {target}")), "{rule}");
            assert!(
                rule.starts_with(&format!(
                    "-m comment --comment \"demo/web:http -> 198.19.1.{}:8080\"",
                    i + 1
                )),
                "{rule}"
            );
        }
        assert!(
            !balancing[n - 1].contains("statistic"),
            "last rule always matches"
        );
    }
}

#[test]
fn probability_formatting_matches_upstream() {
    assert_eq!(probability(2), "0.5000000000");
    assert_eq!(probability(3), "0.3333333333");
    assert_eq!(probability(7), "0.1428571429");
    assert_eq!(probability(1000), "0.0010000000");
}

#[test]
fn masquerade_rule_by_configuration() {
    let dst = "-d 198.18.128.10/32 -p tcp -m tcp --dport 80";
    let note = "-m comment --comment \"demo/web:http cluster IP\"";
    let cases: [(Vec<IpNet>, bool, Option<String>); 5] = [
        (
            vec![net("198.19.0.0/16")],
            false,
            Some(format!("{note} {dst} ! -s 198.19.0.0/16 -j SWY-MARK-MASQ")),
        ),
        // Host bits are cleared so the rule text is canonical.
        (
            vec![net("198.19.3.4/16")],
            false,
            Some(format!("{note} {dst} ! -s 198.19.0.0/16 -j SWY-MARK-MASQ")),
        ),
        (
            vec![net("198.19.0.0/16")],
            true,
            Some(format!("{note} {dst} -j SWY-MARK-MASQ")),
        ),
        (vec![], false, None),
        (
            vec![net("198.19.0.0/16"), net("198.18.64.0/18")],
            false,
            Some(format!("{note} {dst} -j SWY-MASQ-OFF-CLUSTER")),
        ),
    ];
    for (cidrs, all, expected) in cases {
        let c = RuleConfig {
            cluster_cidrs: cidrs.clone(),
            masquerade_all: all,
            ..cfg()
        };
        let p = web(vec![ep("198.19.1.5", 8080)]);
        let r = port_rules(&p, &c);
        let first = own(&r, &svc_chain(&p.key))[0].clone();
        match &expected {
            Some(rule) => assert_eq!(&first, rule, "{cidrs:?} all={all}"),
            None => assert!(!first.contains("MASQ"), "{first}"),
        }
    }
}

#[test]
fn masq_off_cluster_chain_returns_for_every_cluster_cidr() {
    let c = RuleConfig {
        cluster_cidrs: vec![
            net("198.19.0.0/16"),
            net("198.18.64.0/18"),
            net("2001:db8::/48"),
        ],
        ..cfg()
    };
    let base = base_rules(&c);
    assert_eq!(
        base.chains[&ChainRef::new(Table::Nat, MASQ_OFF_CLUSTER)],
        vec![
            "-s 198.19.0.0/16 -j RETURN",
            "-s 198.18.64.0/18 -j RETURN",
            "-j SWY-MARK-MASQ"
        ]
    );
}

#[test]
fn session_affinity_checks_first_and_records_in_endpoint_chain() {
    for timeout in [10800u32, 60] {
        let mut p = web(vec![ep("198.19.1.5", 8080), ep("198.19.2.6", 8080)]);
        p.session_affinity_timeout = Some(timeout);
        let r = port_rules(&p, &cfg());
        let rules = own(&r, &svc_chain(&p.key));
        let (a, b) = (sep(&p, "198.19.1.5", 8080), sep(&p, "198.19.2.6", 8080));
        assert_eq!(rules.len(), 5, "{rules:#?}");
        assert_eq!(
            rules[1],
            format!(
                "-m comment --comment \"demo/web:http -> 198.19.1.5:8080\" -m recent --name {a} --rcheck --seconds {timeout} --reap -j {a}"
            )
        );
        assert_eq!(
            rules[2],
            format!(
                "-m comment --comment \"demo/web:http -> 198.19.2.6:8080\" -m recent --name {b} --rcheck --seconds {timeout} --reap -j {b}"
            )
        );
        assert!(rules[3].contains("--probability 0.5000000000"));
        assert_eq!(
            own(&r, &a)[1],
            format!(
                "-m comment --comment \"demo/web:http\" -m recent --name {a} --set -p tcp -m tcp -j DNAT --to-destination 198.19.1.5:8080"
            )
        );
        assert_all_sane(&r);
    }
}

#[test]
fn endpoint_chain_masquerades_hairpin_then_dnats() {
    let p = web(vec![ep("198.19.1.5", 8080)]);
    let r = port_rules(&p, &cfg());
    assert_eq!(
        own(&r, &sep(&p, "198.19.1.5", 8080)),
        [
            "-m comment --comment \"demo/web:http\" -s 198.19.1.5/32 -j SWY-MARK-MASQ".to_owned(),
            "-m comment --comment \"demo/web:http\" -p tcp -m tcp -j DNAT --to-destination 198.19.1.5:8080"
                .to_owned(),
        ]
    );
    assert!(!own(&r, &sep(&p, "198.19.1.5", 8080))[1].contains("recent"));
}

#[test]
fn udp_uses_udp_matches_everywhere() {
    let k = key("dns", "dns", Protocol::Udp);
    let mut p = port_with(k, "198.18.128.53", 53, vec![ep("198.19.1.5", 5353)]);
    p.node_port = Some(30053);
    p.health_check_node_port = Some(31000);
    let r = port_rules(&p, &cfg());
    assert_eq!(
        shared(&r, Table::Nat, SERVICES)[0],
        format!(
            "-m comment --comment \"demo/dns:dns cluster IP\" -d 198.18.128.53/32 -p udp -m udp --dport 53 -j {}",
            svc_chain(&p.key)
        )
    );
    assert_eq!(
        own(&r, &sep(&p, "198.19.1.5", 5353))[1],
        "-m comment --comment \"demo/dns:dns\" -p udp -m udp -j DNAT --to-destination 198.19.1.5:5353"
    );
    assert!(shared(&r, Table::Nat, NODEPORTS)[0].contains("-p udp -m udp --dport 30053"));
    // The health check is HTTP, so TCP even for a UDP service.
    assert!(shared(&r, Table::Filter, NODEPORTS)[0].contains("-p tcp -m tcp --dport 31000"));
    assert!(r.chains.values().flatten().all(|x| !x.contains("tcp")));
}

/// demo/sig:diameter SCTP 198.18.128.38:3868, NodePort 30868, one externalIP, ClientIP affinity.
fn sctp(endpoints: Vec<Endpoint>) -> ServicePort {
    let k = key("sig", "diameter", Protocol::Sctp);
    let mut p = port_with(k, "198.18.128.38", 3868, endpoints);
    p.node_port = Some(30868);
    p.external_ips = vec![ip("203.0.113.38")];
    p.session_affinity_timeout = Some(10800);
    refresh_frontends(&mut p);
    p
}

#[test]
fn sctp_uses_sctp_matches_as_upstream() {
    let p = sctp(vec![ep("198.19.1.5", 13868)]);
    let r = port_rules(&p, &cfg());
    let (svc, ext) = (svc_chain(&p.key), ext_chain(&p.key));
    let sep = sep(&p, "198.19.1.5", 13868);
    assert_eq!(
        shared(&r, Table::Nat, SERVICES),
        vec![
            format!("-m comment --comment \"demo/sig:diameter cluster IP\" -d 198.18.128.38/32 -p sctp -m sctp --dport 3868 -j {svc}"),
            format!("-m comment --comment \"demo/sig:diameter external IP\" -d 203.0.113.38/32 -p sctp -m sctp --dport 3868 -j {ext}"),
        ]
    );
    assert_eq!(
        shared(&r, Table::Nat, NODEPORTS),
        vec![format!(
            "-m comment --comment \"demo/sig:diameter\" -p sctp -m sctp --dport 30868 -j {ext}"
        )]
    );
    assert_eq!(
        own(&r, &svc),
        [
            "-m comment --comment \"demo/sig:diameter cluster IP\" -d 198.18.128.38/32 -p sctp -m sctp --dport 3868 ! -s 198.19.0.0/16 -j SWY-MARK-MASQ".to_owned(),
            format!("-m comment --comment \"demo/sig:diameter -> 198.19.1.5:13868\" -m recent --name {sep} --rcheck --seconds 10800 --reap -j {sep}"),
            format!("-m comment --comment \"demo/sig:diameter -> 198.19.1.5:13868\" -j {sep}"),
        ]
    );
    assert_eq!(
        own(&r, &sep),
        [
            "-m comment --comment \"demo/sig:diameter\" -s 198.19.1.5/32 -j SWY-MARK-MASQ".to_owned(),
            format!("-m comment --comment \"demo/sig:diameter\" -m recent --name {sep} --set -p sctp -m sctp -j DNAT --to-destination 198.19.1.5:13868"),
        ]
    );
    assert!(r
        .chains
        .values()
        .flatten()
        .chain(r.shared.iter().map(|(_, x)| x))
        .all(|x| !x.contains("tcp") && !x.contains("udp")));
}

#[test]
fn sctp_without_endpoints_is_rejected_with_icmp_as_upstream() {
    let p = sctp(vec![]);
    let r = port_rules(&p, &cfg());
    let note = "-m comment --comment \"demo/sig:diameter has no endpoints\"";
    assert_eq!(
        shared(&r, Table::Filter, SERVICES),
        vec![format!(
            "{note} -d 198.18.128.38/32 -p sctp -m sctp --dport 3868 -j REJECT"
        )]
    );
    assert_eq!(
        shared(&r, Table::Filter, EXTERNAL_SERVICES),
        vec![
            format!("{note} -d 203.0.113.38/32 -p sctp -m sctp --dport 3868 -j REJECT"),
            format!("{note} -m addrtype --dst-type LOCAL -p sctp -m sctp --dport 30868 -j REJECT"),
        ]
    );
    assert!(r.chains.is_empty(), "{r:#?}");
}

#[test]
fn unnamed_port_comment_has_no_colon() {
    let p = port_with(key("web", "", Protocol::Tcp), "198.18.128.11", 80, vec![]);
    let r = port_rules(&p, &cfg());
    assert_eq!(
        shared(&r, Table::Filter, SERVICES),
        vec!["-m comment --comment \"demo/web has no endpoints\" -d 198.18.128.11/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset"]
    );
}

// ---------------------------------------------------------------------------------------------
// External destinations.
// ---------------------------------------------------------------------------------------------

#[test]
fn external_destinations_dispatch_to_ext_chain_with_cluster_policy() {
    let p = lb(vec![ep("198.19.1.5", 8080)]);
    let r = port_rules(&p, &cfg());
    let (ext, svc) = (ext_chain(&p.key), svc_chain(&p.key));
    assert_eq!(
        shared(&r, Table::Nat, SERVICES),
        vec![
            format!("-m comment --comment \"demo/web:http cluster IP\" -d 198.18.128.10/32 -p tcp -m tcp --dport 80 -j {svc}"),
            format!("-m comment --comment \"demo/web:http external IP\" -d 203.0.113.5/32 -p tcp -m tcp --dport 80 -j {ext}"),
            format!("-m comment --comment \"demo/web:http loadbalancer IP\" -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j {ext}"),
        ]
    );
    assert_eq!(
        shared(&r, Table::Nat, NODEPORTS),
        vec![format!(
            "-m comment --comment \"demo/web:http\" -p tcp -m tcp --dport 30080 -j {ext}"
        )]
    );
    assert_eq!(
        own(&r, &ext),
        [
            "-m comment --comment \"masquerade traffic for demo/web:http external destinations\" -j SWY-MARK-MASQ".to_owned(),
            format!("-j {svc}"),
        ]
    );
    assert!(!has_own(&r, &fw_chain(&p.key)) && !has_own(&r, &svl_chain(&p.key)));
    assert!(shared(&r, Table::Filter, EXTERNAL_SERVICES).is_empty());
    assert!(shared(&r, Table::Filter, PROXY_FIREWALL).is_empty());
    assert_all_sane(&r);
}

#[test]
fn source_ranges_route_lb_traffic_through_firewall_chain() {
    // (ranges, node admitted?, expected FW rules before the final comment)
    let cases: [(Vec<&str>, Vec<String>); 3] = [
        (vec!["198.51.100.0/24"], vec!["-s 198.51.100.0/24".into()]),
        // 198.18.0.0/24 contains the node IP: the LB IP as source is admitted too.
        (
            vec!["198.51.100.0/24", "198.18.0.0/24"],
            vec![
                "-s 198.51.100.0/24".into(),
                "-s 198.18.0.0/24".into(),
                "-s 203.0.113.10/32".into(),
            ],
        ),
        // Only IPv6 ranges: no IPv4 source is admitted.
        (vec!["2001:db8::/32"], vec![]),
    ];
    for (ranges, sources) in cases {
        let mut p = lb(vec![ep("198.19.1.5", 8080)]);
        p.load_balancer_source_ranges = ranges.iter().map(|r| net(r)).collect();
        let r = port_rules(&p, &cfg());
        let (fw, ext) = (fw_chain(&p.key), ext_chain(&p.key));
        let note = "-m comment --comment \"demo/web:http loadbalancer IP\"";
        let mut expected: Vec<String> = sources
            .iter()
            .map(|s| format!("{note} {s} -j {ext}"))
            .collect();
        expected.push(
            "-m comment --comment \"other traffic to demo/web:http will be dropped by SWY-PROXY-FIREWALL\""
                .to_owned(),
        );
        assert_eq!(own(&r, &fw), expected.as_slice(), "{ranges:?}");
        assert!(shared(&r, Table::Nat, SERVICES).contains(&format!(
            "{note} -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j {fw}"
        )));
        // externalIPs and NodePorts ignore source ranges.
        assert!(shared(&r, Table::Nat, SERVICES)[1].ends_with(&format!("-j {ext}")));
        assert!(shared(&r, Table::Nat, NODEPORTS)[0].ends_with(&format!("-j {ext}")));
        assert_eq!(
            shared(&r, Table::Filter, PROXY_FIREWALL),
            vec![format!(
                "-m comment --comment \"demo/web:http traffic not accepted by {fw}\" -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DROP"
            )]
        );
        assert_all_sane(&r);
    }
}

#[test]
fn external_local_policy_chain_shape() {
    let mut p = lb(vec![local(ep("198.19.1.5", 8080)), ep("198.19.2.6", 8080)]);
    p.external_traffic_policy = TrafficPolicy::Local;
    p.health_check_node_port = Some(31000);
    let c = RuleConfig {
        cluster_cidrs: vec![net("198.19.0.0/16"), net("198.18.192.0/18")],
        ..cfg()
    };
    let r = port_rules(&p, &c);
    let (ext, svc, svl) = (ext_chain(&p.key), svc_chain(&p.key), svl_chain(&p.key));
    assert_eq!(
        own(&r, &ext),
        [
            format!("-m comment --comment \"pod traffic for demo/web:http external destinations\" -s 198.19.0.0/16 -j {svc}"),
            format!("-m comment --comment \"pod traffic for demo/web:http external destinations\" -s 198.18.192.0/18 -j {svc}"),
            "-m comment --comment \"masquerade LOCAL traffic for demo/web:http external destinations\" -m addrtype --src-type LOCAL -j SWY-MARK-MASQ".to_owned(),
            format!("-m comment --comment \"route LOCAL traffic for demo/web:http external destinations\" -m addrtype --src-type LOCAL -j {svc}"),
            format!("-j {svl}"),
        ]
    );
    // SVC balances over both endpoints (short-circuit), SVL over the local one only.
    assert_eq!(
        own(&r, &svc)
            .iter()
            .filter(|x| x.contains("SWY-SEP-"))
            .count(),
        2
    );
    assert_eq!(
        own(&r, &svl),
        [format!(
            "-m comment --comment \"demo/web:http -> 198.19.1.5:8080\" -j {}",
            sep(&p, "198.19.1.5", 8080)
        )]
    );
    // No masquerade rule in SVL: cluster IP traffic goes to SVC (ITP Cluster).
    assert!(has_own(&r, &sep(&p, "198.19.2.6", 8080)));
    assert!(shared(&r, Table::Filter, EXTERNAL_SERVICES).is_empty());
    assert_eq!(
        shared(&r, Table::Filter, NODEPORTS),
        vec!["-m comment --comment \"demo/web:http health check node port\" -p tcp -m tcp --dport 31000 -j ACCEPT"]
    );
    assert_all_sane(&r);
}

#[test]
fn external_local_policy_without_local_endpoints_drops_external_traffic() {
    let mut p = lb(vec![ep("198.19.2.6", 8080)]);
    p.external_traffic_policy = TrafficPolicy::Local;
    let r = port_rules(&p, &cfg());
    let ext = ext_chain(&p.key);
    // The short-circuit stays, the final jump to SVL does not exist.
    let rules = own(&r, &ext);
    assert_eq!(rules.len(), 3, "{rules:#?}");
    assert!(rules.iter().all(|x| !x.contains("SWY-SVL-")));
    assert!(!has_own(&r, &svl_chain(&p.key)));
    let note = "-m comment --comment \"demo/web:http has no local endpoints\"";
    assert_eq!(
        shared(&r, Table::Filter, EXTERNAL_SERVICES),
        vec![
            format!("{note} -d 203.0.113.5/32 -p tcp -m tcp --dport 80 -j DROP"),
            format!("{note} -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DROP"),
            format!("{note} -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j DROP"),
        ]
    );
    // Cluster IP traffic is unaffected, nat dispatch for external destinations remains.
    assert!(shared(&r, Table::Filter, SERVICES).is_empty());
    assert_eq!(shared(&r, Table::Nat, SERVICES).len(), 3);
    assert_eq!(shared(&r, Table::Nat, NODEPORTS).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Internal traffic policy and verdicts.
// ---------------------------------------------------------------------------------------------

#[test]
fn internal_local_policy_uses_local_chain_or_drops() {
    // (endpoints, expect SVL dispatch?)
    let cases = [
        (
            vec![local(ep("198.19.1.5", 8080)), ep("198.19.2.6", 8080)],
            true,
        ),
        (vec![ep("198.19.2.6", 8080)], false),
    ];
    for (eps, has_local) in cases {
        let mut p = web(eps);
        p.internal_traffic_policy = TrafficPolicy::Local;
        let r = port_rules(&p, &cfg());
        let svl = svl_chain(&p.key);
        assert!(
            !has_own(&r, &svc_chain(&p.key)),
            "SVC unused without external access"
        );
        if has_local {
            assert!(shared(&r, Table::Nat, SERVICES)[0].ends_with(&format!("-j {svl}")));
            let rules = own(&r, &svl);
            assert!(
                rules[0].ends_with("! -s 198.19.0.0/16 -j SWY-MARK-MASQ"),
                "{rules:#?}"
            );
            assert_eq!(rules.len(), 2);
            assert!(
                !has_own(&r, &sep(&p, "198.19.2.6", 8080)),
                "remote SEP unused"
            );
            assert!(shared(&r, Table::Filter, SERVICES).is_empty());
        } else {
            assert!(r.chains.is_empty(), "{r:#?}");
            assert!(shared(&r, Table::Nat, SERVICES).is_empty());
            assert_eq!(
                shared(&r, Table::Filter, SERVICES),
                vec!["-m comment --comment \"demo/web:http has no local endpoints\" -d 198.18.128.10/32 -p tcp -m tcp --dport 80 -j DROP"]
            );
        }
    }
}

#[test]
fn no_endpoints_rejects_every_destination_and_writes_no_nat() {
    for eps in [vec![], vec![not_serving(ep("198.19.1.5", 8080))]] {
        let mut p = lb(eps);
        p.health_check_node_port = Some(31000);
        p.load_balancer_source_ranges = vec![net("198.51.100.0/24")];
        let r = port_rules(&p, &cfg());
        assert!(r.chains.is_empty(), "{r:#?}");
        assert!(r.shared.iter().all(|(c, _)| c.table == Table::Filter));
        let note = "-m comment --comment \"demo/web:http has no endpoints\"";
        assert_eq!(
            shared(&r, Table::Filter, SERVICES),
            vec![format!(
                "{note} -d 198.18.128.10/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset"
            )]
        );
        assert_eq!(
            shared(&r, Table::Filter, EXTERNAL_SERVICES),
            vec![
                format!("{note} -d 203.0.113.5/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset"),
                format!("{note} -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset"),
                format!(
                    "{note} -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j REJECT --reject-with tcp-reset"
                ),
            ]
        );
        // No FW chain without endpoints, so nothing to drop in SWY-PROXY-FIREWALL.
        assert!(shared(&r, Table::Filter, PROXY_FIREWALL).is_empty());
        assert_eq!(shared(&r, Table::Filter, NODEPORTS).len(), 1);
        assert_all_sane(&r);
    }
}

#[test]
fn no_endpoints_with_local_policies_still_rejects() {
    let mut p = lb(vec![]);
    p.internal_traffic_policy = TrafficPolicy::Local;
    p.external_traffic_policy = TrafficPolicy::Local;
    let r = port_rules(&p, &cfg());
    assert!(r
        .shared
        .iter()
        .all(|(_, x)| x.ends_with("-j REJECT --reject-with tcp-reset")));
    assert_eq!(r.shared.len(), 4);
}

#[test]
fn terminating_fallback_is_reflected_in_the_chains() {
    // (endpoints, SEPs in SVC)
    let cases: [(Vec<Endpoint>, Vec<&str>); 3] = [
        // Ready endpoints win over terminating ones.
        (
            vec![ep("198.19.1.5", 8080), terminating(ep("198.19.1.6", 8080))],
            vec!["198.19.1.5"],
        ),
        // No ready endpoint: serving + terminating ones are used, non-serving never.
        (
            vec![
                terminating(ep("198.19.1.6", 8080)),
                not_serving(ep("198.19.1.7", 8080)),
            ],
            vec!["198.19.1.6"],
        ),
        (vec![not_serving(ep("198.19.1.7", 8080))], vec![]),
    ];
    for (eps, expected) in cases {
        let p = web(eps);
        let r = port_rules(&p, &cfg());
        let expected: BTreeSet<String> = expected.iter().map(|a| sep(&p, a, 8080)).collect();
        let seps: BTreeSet<String> = r
            .chains
            .keys()
            .filter(|c| c.chain.starts_with(chains::SEP_PREFIX))
            .map(|c| c.chain.clone())
            .collect();
        assert_eq!(seps, expected);
    }
}

#[test]
fn local_set_falls_back_to_local_terminating_independently() {
    // A remote ready endpoint exists, the only local one is terminating: ETP Local uses it.
    let mut p = lb(vec![
        ep("198.19.2.6", 8080),
        local(terminating(ep("198.19.1.5", 8080))),
    ]);
    p.external_traffic_policy = TrafficPolicy::Local;
    let r = port_rules(&p, &cfg());
    let local_sep = sep(&p, "198.19.1.5", 8080);
    assert_eq!(own(&r, &svl_chain(&p.key)).len(), 1);
    assert!(own(&r, &svl_chain(&p.key))[0].ends_with(&local_sep));
    // The cluster set (short-circuit) only has the ready remote endpoint.
    let svc_rules = own(&r, &svc_chain(&p.key));
    assert!(svc_rules.iter().all(|x| !x.contains(&local_sep)));
    assert!(shared(&r, Table::Filter, EXTERNAL_SERVICES).is_empty());
}

/// `e` hinted for these zones.
fn in_zones(mut e: Endpoint, zones: &[&str]) -> Endpoint {
    e.hints = Some(Box::new(crate::TopologyHints {
        zones: zones.iter().map(|z| z.to_string()).collect(),
        nodes: Default::default(),
    }));
    e
}

/// The SEP chains an own chain jumps to.
fn seps_in(r: &PortRules, chain: &str) -> BTreeSet<String> {
    own(r, chain)
        .iter()
        .filter_map(|x| x.split(" -j ").nth(1))
        .filter(|target| target.starts_with(chains::SEP_PREFIX))
        .map(str::to_owned)
        .collect()
}

#[test]
fn topology_hints_narrow_the_cluster_chain_only() {
    // This node is in zone-a; ETP Local. SVC (cluster IP, short-circuit) balances over the
    // zone-a endpoints, SVL over the local ones whatever their hints, and every endpoint
    // either uses gets its SEP chain (upstream allLocallyReachableEndpoints).
    let mut p = lb(vec![
        in_zones(local(ep("198.19.1.5", 8080)), &["zone-b"]),
        in_zones(ep("198.19.1.6", 8080), &["zone-a"]),
        in_zones(ep("198.19.2.6", 8080), &["zone-b"]),
    ]);
    p.external_traffic_policy = TrafficPolicy::Local;
    p.topology = p.topology_for("this", "zone-a");
    let r = port_rules(&p, &cfg());
    let named = p.clone();
    let set = |addrs: &[&str]| -> BTreeSet<String> {
        addrs.iter().map(|a| sep(&named, a, 8080)).collect()
    };
    assert_eq!(seps_in(&r, &svc_chain(&p.key)), set(&["198.19.1.6"]));
    assert_eq!(seps_in(&r, &svl_chain(&p.key)), set(&["198.19.1.5"]));
    let all: BTreeSet<String> = r
        .chains
        .keys()
        .filter(|c| c.chain.starts_with(chains::SEP_PREFIX))
        .map(|c| c.chain.clone())
        .collect();
    assert_eq!(all, set(&["198.19.1.5", "198.19.1.6"]));
    // Without the zone, every endpoint is in SVC again.
    p.topology = p.topology_for("this", "");
    let r = port_rules(&p, &cfg());
    assert_eq!(
        seps_in(&r, &svc_chain(&p.key)),
        set(&["198.19.1.5", "198.19.1.6", "198.19.2.6"])
    );
    assert_all_sane(&r);
}

// ---------------------------------------------------------------------------------------------
// Families, isolation, determinism.
// ---------------------------------------------------------------------------------------------

#[test]
fn ipv6_data_is_ignored_and_families_decide_alone() {
    let mut p = lb(vec![
        ep("2001:db8::5", 8080),
        terminating(ep("198.19.1.5", 8080)),
    ]);
    p.cluster_ips.push(ip("2001:db8:18::10"));
    p.external_ips.push(ip("2001:db8::5"));
    p.load_balancer_ips.push(ip("2001:db8::10"));
    refresh_frontends(&mut p);
    let r = port_rules(&p, &cfg());
    let all: Vec<&String> = r
        .chains
        .values()
        .flatten()
        .chain(r.shared.iter().map(|(_, x)| x))
        .collect();
    assert!(all.iter().all(|x| !x.contains("2001:")));
    // The IPv6 endpoint is ready, but the IPv4 family only has a terminating one, which it
    // uses (upstream runs one proxier per family).
    assert!(has_own(&r, &sep(&p, "198.19.1.5", 8080)));

    let mut v6_only = p.clone();
    v6_only.cluster_ips = vec![ip("2001:db8:18::10")];
    assert_eq!(port_rules(&v6_only, &cfg()), PortRules::default());
}

#[test]
fn ports_never_share_chains_and_output_is_deterministic() {
    let mut a = lb(vec![ep("198.19.1.5", 8080), local(ep("198.19.1.6", 8080))]);
    a.external_traffic_policy = TrafficPolicy::Local;
    a.load_balancer_source_ranges = vec![net("198.51.100.0/24")];
    let mut b = a.clone();
    b.key = key("web", "https", Protocol::Tcp);
    let mut c = a.clone();
    c.key = key("web", "http", Protocol::Udp);
    let outs: Vec<PortRules> = [&a, &b, &c].iter().map(|p| port_rules(p, &cfg())).collect();
    for (i, x) in outs.iter().enumerate() {
        for y in &outs[i + 1..] {
            let shared_chains: Vec<_> = x
                .chains
                .keys()
                .filter(|k| y.chains.contains_key(*k))
                .collect();
            assert!(shared_chains.is_empty(), "{shared_chains:?}");
            assert!(x.shared.iter().all(|s| !y.shared.contains(s)));
        }
        for c in x.chains.keys() {
            assert!(chains::is_port_chain(&c.chain) && c.table == Table::Nat);
        }
    }
    assert_eq!(port_rules(&a, &cfg()), outs[0]);
}

#[test]
fn duplicate_addresses_yield_one_shared_rule() {
    let mut p = lb(vec![ep("198.19.1.5", 8080)]);
    p.external_ips = vec![ip("203.0.113.5"), ip("203.0.113.5")];
    let r = port_rules(&p, &cfg());
    let unique: BTreeSet<_> = r.shared.iter().collect();
    assert_eq!(unique.len(), r.shared.len());
}

#[test]
fn comments_cannot_break_out_of_quotes() {
    let evil = comment("a\"b\\c\nd");
    assert_eq!(evil, "-m comment --comment \"a_b_c_d\"");
    let long = comment(&"x".repeat(400));
    assert_eq!(
        long.len(),
        "-m comment --comment \"\"".len() + MAX_COMMENT_BYTES
    );
}

// ---------------------------------------------------------------------------------------------
// Base rules.
// ---------------------------------------------------------------------------------------------

fn jumps_of(base: &BaseRules, table: Table, builtin: &str) -> Vec<String> {
    base.jumps
        .iter()
        .filter(|(c, _)| c.table == table && c.chain == builtin)
        .map(|(_, r)| r.render())
        .collect()
}

const PORTALS: &str = "-m comment --comment \"switchyard service portals\" -j SWY-SERVICES";
const NP_NOTE: &str = "-m comment --comment \"switchyard service nodeports\"";

#[test]
fn nodeport_jumps_by_configuration() {
    let cases: [(Vec<&str>, bool, Vec<String>); 6] = [
        (
            vec![],
            false,
            vec![format!(
                "{NP_NOTE} -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j SWY-NODEPORTS"
            )],
        ),
        (
            vec![],
            true,
            vec![format!(
                "{NP_NOTE} -m addrtype --dst-type LOCAL -j SWY-NODEPORTS"
            )],
        ),
        (
            vec!["198.18.0.0/24", "198.18.16.0/20", "2001:db8::/64"],
            false,
            vec![
                format!("{NP_NOTE} -d 198.18.0.0/24 -m addrtype --dst-type LOCAL -j SWY-NODEPORTS"),
                format!(
                    "{NP_NOTE} -d 198.18.16.0/20 -m addrtype --dst-type LOCAL -j SWY-NODEPORTS"
                ),
            ],
        ),
        // Loopback inside the CIDRs: kept with localhost NodePorts, cut out otherwise.
        (
            vec!["127.0.0.1/32", "198.18.0.0/24"],
            true,
            vec![
                format!("{NP_NOTE} -d 127.0.0.1/32 -m addrtype --dst-type LOCAL -j SWY-NODEPORTS"),
                format!("{NP_NOTE} -d 198.18.0.0/24 -m addrtype --dst-type LOCAL -j SWY-NODEPORTS"),
            ],
        ),
        (
            vec!["127.0.0.1/32", "198.18.0.0/24"],
            false,
            vec![format!(
                "{NP_NOTE} -d 198.18.0.0/24 -m addrtype --dst-type LOCAL -j SWY-NODEPORTS"
            )],
        ),
        // Only IPv6 CIDRs: no IPv4 NodePorts at all.
        (vec!["2001:db8::/64"], false, vec![]),
    ];
    for (cidrs, localhost, expected_np) in cases {
        let c = RuleConfig {
            nodeport_cidrs: cidrs.iter().map(|x| net(x)).collect(),
            localhost_nodeports: localhost,
            ..cfg()
        };
        let base = base_rules(&c);
        for builtin in ["PREROUTING", "OUTPUT"] {
            let mut expected = vec![PORTALS.to_owned()];
            expected.extend(expected_np.iter().cloned());
            assert_eq!(
                jumps_of(&base, Table::Nat, builtin),
                expected,
                "{cidrs:?} {localhost}"
            );
        }
        base.jumps
            .iter()
            .for_each(|(_, r)| assert_sane(&r.render()));
    }
}

#[test]
fn without_loopback_splits_cidrs_around_127() {
    let split = |text: &str| -> Vec<String> {
        without_loopback(net(text))
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(split("198.18.0.0/15"), ["198.18.0.0/15"]);
    assert!(split("127.0.0.1/32").is_empty());
    assert!(split("127.0.0.0/8").is_empty());
    assert_eq!(
        split("0.0.0.0/1"),
        [
            "0.0.0.0/2",
            "64.0.0.0/3",
            "96.0.0.0/4",
            "112.0.0.0/5",
            "120.0.0.0/6",
            "124.0.0.0/7",
            "126.0.0.0/8"
        ]
    );
    assert_eq!(split("0.0.0.0/0").len(), 8);
}

#[test]
fn builtin_jumps_match_upstream_order() {
    let base = base_rules(&cfg());
    let new = "-m conntrack --ctstate NEW";
    let lbfw = format!(
        "{new} -m comment --comment \"switchyard load balancer firewall\" -j SWY-PROXY-FIREWALL"
    );
    let ext = format!("{new} -m comment --comment \"switchyard externally-visible service portals\" -j SWY-EXTERNAL-SERVICES");
    let svc = format!("{new} {PORTALS}");
    assert_eq!(
        jumps_of(&base, Table::Filter, "INPUT"),
        vec![
            lbfw.clone(),
            "-m comment --comment \"switchyard health check service ports\" -j SWY-NODEPORTS"
                .into(),
            ext.clone(),
        ]
    );
    assert_eq!(
        jumps_of(&base, Table::Filter, "FORWARD"),
        vec![
            lbfw.clone(),
            "-m comment --comment \"switchyard forwarding rules\" -j SWY-FORWARD".into(),
            svc.clone(),
            ext,
        ]
    );
    assert_eq!(jumps_of(&base, Table::Filter, "OUTPUT"), vec![lbfw, svc]);
    assert_eq!(
        jumps_of(&base, Table::Nat, "POSTROUTING"),
        vec!["-m comment --comment \"switchyard postrouting rules\" -j SWY-POSTROUTING"]
    );
    assert!(base
        .jumps
        .iter()
        .all(|(_, r)| r.render().contains("-m comment --comment")));
    // Every jump target is a declared chain of the same table.
    for (c, r) in &base.jumps {
        let target = r.0.last().map(String::as_str).unwrap_or_default();
        assert!(
            base.chains.contains_key(&ChainRef::new(c.table, target)),
            "{r}"
        );
    }
}

#[test]
fn localhost_nodeports_add_the_localnet_firewall() {
    let on = base_rules(&RuleConfig {
        localhost_nodeports: true,
        ..cfg()
    });
    let fw = ChainRef::new(Table::Filter, FIREWALL);
    assert_eq!(
        on.chains[&fw],
        vec!["-m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"]
    );
    for builtin in ["INPUT", "OUTPUT"] {
        assert!(jumps_of(&on, Table::Filter, builtin)[0].ends_with("-j SWY-FIREWALL"));
    }
    let off = base_rules(&cfg());
    assert!(off.chains[&fw].is_empty(), "declared, but empty");
    assert!(off
        .jumps
        .iter()
        .all(|(_, r)| !r.render().ends_with("-j SWY-FIREWALL")));
    // Localhost NodePorts need loopback among the NodePort addresses.
    let not_loopback = base_rules(&RuleConfig {
        localhost_nodeports: true,
        nodeport_cidrs: vec![net("198.18.0.0/24")],
        ..cfg()
    });
    assert!(not_loopback.chains[&fw].is_empty());
}

#[test]
fn static_chains_have_upstream_rules() {
    let base = base_rules(&cfg());
    let get = |t, n| base.chains[&ChainRef::new(t, n)].clone();
    assert_eq!(get(Table::Nat, MARK_MASQ), vec!["-j MARK --or-mark 0x4000"]);
    assert_eq!(
        get(Table::Nat, POSTROUTING),
        vec![
            "-m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-j MARK --xor-mark 0x4000",
            "-m comment --comment \"switchyard service traffic requiring SNAT\" -j MASQUERADE --random-fully",
        ]
    );
    assert_eq!(
        get(Table::Filter, FORWARD),
        vec![
            "-m conntrack --ctstate INVALID -j DROP",
            "-m comment --comment \"switchyard forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
            "-m comment --comment \"switchyard forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ]
    );
    for (t, n) in [
        (Table::Nat, SERVICES),
        (Table::Nat, NODEPORTS),
        (Table::Filter, SERVICES),
        (Table::Filter, EXTERNAL_SERVICES),
        (Table::Filter, NODEPORTS),
        (Table::Filter, PROXY_FIREWALL),
        (Table::Mangle, CANARY),
        (Table::Nat, CANARY),
        (Table::Filter, CANARY),
    ] {
        assert!(
            get(t, n).is_empty(),
            "{t} {n}: dispatch and canary chains start empty"
        );
    }
    assert!(base.chains.keys().all(|c| chains::is_ours(&c.chain)));
    base.chains.values().flatten().for_each(|r| assert_sane(r));
}

// ---------------------------------------------------------------------------------------------
// Sample ports for the kernel test.
// ---------------------------------------------------------------------------------------------

/// A mix of ports touching every rule shape.
fn sample_ports() -> Vec<ServicePort> {
    let plain = web(vec![ep("198.19.1.5", 8080), ep("198.19.2.6", 8080)]);
    let mut sticky = lb(vec![ep("198.19.1.5", 8443), local(ep("198.19.1.6", 8443))]);
    sticky.key = key("web", "https", Protocol::Tcp);
    sticky.port = 443;
    sticky.session_affinity_timeout = Some(10800);
    sticky.external_traffic_policy = TrafficPolicy::Local;
    sticky.health_check_node_port = Some(31000);
    sticky.load_balancer_source_ranges = vec![net("198.51.100.0/24"), net("198.18.0.0/24")];
    let mut dns = port_with(
        key("dns", "dns", Protocol::Udp),
        "198.18.128.53",
        53,
        vec![local(ep("198.19.1.7", 53))],
    );
    dns.internal_traffic_policy = TrafficPolicy::Local;
    dns.node_port = Some(30053);
    let mut empty = lb(vec![]);
    empty.key = key("empty", "", Protocol::Tcp);
    let mut no_local = lb(vec![ep("198.19.2.6", 8080)]);
    no_local.key = key("nolocal", "x", Protocol::Tcp);
    no_local.internal_traffic_policy = TrafficPolicy::Local;
    no_local.external_traffic_policy = TrafficPolicy::Local;
    vec![plain, sticky, dns, empty, no_local]
}

/// Every rule of every sample port is well-formed under each configuration the kernel test
/// (`proxy/tests/iptables_kernel.rs`) loads.
#[test]
fn sample_ports_render_sane_rules_under_every_configuration() {
    for c in [
        cfg(),
        RuleConfig {
            cluster_cidrs: vec![net("198.19.0.0/16"), net("198.18.64.0/18")],
            masquerade_all: true,
            nodeport_cidrs: vec![net("0.0.0.0/1"), net("198.18.0.0/24")],
            localhost_nodeports: false,
            ..cfg()
        },
        RuleConfig {
            localhost_nodeports: true,
            ..cfg()
        },
    ] {
        for port in sample_ports() {
            assert_all_sane(&port_rules(&port, &c));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IPv6 (ip6tables): the same chains from one family's data.
// ---------------------------------------------------------------------------------------------

fn cfg6() -> RuleConfig {
    RuleConfig {
        family: Family::Ipv6,
        cluster_cidrs: vec![net("198.19.0.0/16"), net("2001:db8:1::/48")],
        node_ips: vec![ip("198.18.0.10"), ip("2001:db8:0:1::10")],
        ..cfg()
    }
}

/// A dual-stack demo/web:http with an IPv4 and an IPv6 cluster IP and endpoints of both.
fn dual_stack_web() -> ServicePort {
    let mut p = web(vec![ep("198.19.2.11", 8080), ep("2001:db8:1:2::11", 8080)]);
    p.cluster_ips = vec![ip("198.18.128.10"), ip("2001:db8:5::10")];
    refresh_frontends(&mut p);
    p
}

#[test]
fn ipv6_rules_use_only_ipv6_data() {
    let p = dual_stack_web();
    let r6 = port_rules(&p, &cfg6());
    assert_all_sane(&r6);
    let nat = shared(&r6, Table::Nat, SERVICES);
    assert_eq!(nat.len(), 1, "{nat:?}");
    assert!(
        nat[0].contains("-d 2001:db8:5::10/128 -p tcp -m tcp --dport 80"),
        "{nat:?}"
    );
    let svc = own(&r6, &svc_chain(&p.key));
    // Off-cluster masquerade against the IPv6 cluster CIDR only, then the one IPv6 endpoint.
    assert!(
        svc[0].contains("! -s 2001:db8:1::/48 -j SWY-MARK-MASQ"),
        "{svc:?}"
    );
    assert_eq!(svc.len(), 2, "{svc:?}");
    let sep6 = sep(&p, "2001:db8:1:2::11", 8080);
    let sep_rules = own(&r6, &sep6);
    assert!(sep_rules[0].contains("-s 2001:db8:1:2::11/128 -j SWY-MARK-MASQ"));
    assert!(sep_rules[1].ends_with("-j DNAT --to-destination [2001:db8:1:2::11]:8080"));
    assert!(!has_own(&r6, &sep(&p, "198.19.2.11", 8080)));
    // The IPv4 rule set of the same port knows nothing of IPv6.
    let r4 = port_rules(&p, &cfg());
    let text = format!("{r4:?}");
    assert!(!text.contains("2001:db8"), "{text}");
    assert!(has_own(&r4, &sep(&p, "198.19.2.11", 8080)));
}

#[test]
fn ipv6_rules_need_an_ipv6_cluster_ip() {
    // IPv4-only port: nothing in ip6tables, even with IPv6 endpoints around.
    let p = web(vec![ep("2001:db8:1:2::11", 8080)]);
    assert_eq!(port_rules(&p, &cfg6()), PortRules::default());
}

#[test]
fn ipv6_reject_affinity_source_ranges_and_node_ports() {
    // No endpoints: the same REJECT targets (ip6tables' default is icmp6-port-unreachable).
    let mut p = dual_stack_web();
    p.endpoints.clear();
    let r = port_rules(&p, &cfg6());
    let filter = shared(&r, Table::Filter, SERVICES);
    assert!(
        filter[0].ends_with(
            "-d 2001:db8:5::10/128 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset"
        ),
        "{filter:?}"
    );
    let mut udp = port_with(
        key("dns", "dns", Protocol::Udp),
        "2001:db8:5::53",
        53,
        vec![],
    );
    refresh_frontends(&mut udp);
    let filter = shared(&port_rules(&udp, &cfg6()), Table::Filter, SERVICES);
    assert!(filter[0].ends_with("-j REJECT"), "{filter:?}");

    // ClientIP affinity: `-m recent` works the same on IPv6.
    let mut p = dual_stack_web();
    p.session_affinity_timeout = Some(10800);
    let r = port_rules(&p, &cfg6());
    let sep6 = sep(&p, "2001:db8:1:2::11", 8080);
    assert!(own(&r, &svc_chain(&p.key))
        .iter()
        .any(|x| x.contains(&format!(
            "-m recent --name {sep6} --rcheck --seconds 10800 --reap"
        ))));
    assert!(own(&r, &sep6)[1].contains(&format!("-m recent --name {sep6} --set")));

    // LoadBalancer with source ranges of both families: the IPv6 FW chain admits the IPv6
    // range, and the LB IP itself since a range contains the node's IPv6 address.
    let mut p = dual_stack_web();
    p.load_balancer_ips = vec![ip("203.0.113.10"), ip("2001:db8:f::10")];
    p.load_balancer_source_ranges = vec![net("192.0.2.0/24"), net("2001:db8::/32")];
    refresh_frontends(&mut p);
    let r = port_rules(&p, &cfg6());
    let fw = own(&r, &fw_chain(&p.key));
    assert!(
        fw.iter().any(|x| x.contains("-s 2001:db8::/32 -j")),
        "{fw:?}"
    );
    assert!(
        fw.iter().any(|x| x.contains("-s 2001:db8:f::10/128 -j")),
        "{fw:?}"
    );
    assert!(!fw.iter().any(|x| x.contains("192.0.2.0")), "{fw:?}");
    let drop = shared(&r, Table::Filter, PROXY_FIREWALL);
    assert!(drop[0].contains("-d 2001:db8:f::10/128"), "{drop:?}");
}

#[test]
fn ipv6_never_serves_node_ports_on_loopback() {
    // Every local address: `! -d ::1/128`, even with localhost NodePorts on (IPv4 only).
    let c = RuleConfig {
        localhost_nodeports: true,
        ..cfg6()
    };
    let base = base_rules(&c);
    let jumps: Vec<String> = base
        .jumps
        .iter()
        .filter(|(c, r)| c.table == Table::Nat && r.0.contains(&NODEPORTS.to_owned()))
        .map(|(_, r)| r.render())
        .collect();
    assert_eq!(jumps.len(), 2, "{jumps:?}");
    assert!(
        jumps.iter().all(|j| j.contains("! -d ::1/128")),
        "{jumps:?}"
    );
    assert!(base.chains[&chain(Table::Filter, FIREWALL)].is_empty());
    // NodePort CIDRs: the IPv6 ones, with ::1 cut out; the IPv4 ones are not ours.
    let c = RuleConfig {
        nodeport_cidrs: vec![
            net("198.18.0.0/24"),
            net("2001:db8:0:1::/64"),
            net("::/127"),
        ],
        ..cfg6()
    };
    let jumps: Vec<String> = base_rules(&c)
        .jumps
        .iter()
        .filter(|(c, r)| c.table == Table::Nat && r.0.contains(&NODEPORTS.to_owned()))
        .map(|(_, r)| r.render())
        .collect();
    assert!(
        jumps.iter().any(|j| j.contains("-d 2001:db8:0:1::/64")),
        "{jumps:?}"
    );
    assert!(jumps.iter().any(|j| j.contains("-d ::/128")), "{jumps:?}");
    assert!(!jumps
        .iter()
        .any(|j| j.contains("198.18.0.0") || j.contains("::1/128")));
    assert_eq!(without_loopback(net("::1/128")), Vec::<IpNet>::new());
}

// ---------------------------------------------------------------------------------------------
// Streamed full syncs.
// ---------------------------------------------------------------------------------------------

/// `count` LoadBalancer ports with 10 endpoints each; every third with a source range
/// (firewall chain), every other with Local traffic policies (SVL chain): all chain kinds.
fn many_ports(count: usize) -> Vec<(usize, PortRules)> {
    (0..count)
        .map(|i| {
            let eps = (0..10)
                .map(|e| local(ep(&format!("198.19.{}.{}", e, 1 + i % 250), 8080)))
                .collect();
            let mut p = lb(eps);
            p.key = key(&format!("svc-{i}"), "http", Protocol::Tcp);
            p.cluster_ips = vec![ip(&format!("198.18.{}.{}", 128 + i / 250, 1 + i % 250))];
            p.node_port = Some(30000 + i as u16);
            if i % 3 == 0 {
                p.load_balancer_source_ranges = vec![net("198.51.100.0/24")];
            }
            if i % 2 == 0 {
                p.external_traffic_policy = TrafficPolicy::Local;
                p.internal_traffic_policy = TrafficPolicy::Local;
            }
            refresh_frontends(&mut p);
            (i, port_rules(&p, &cfg()))
        })
        .collect()
}

#[test]
fn a_single_full_sync_is_handed_on_in_bounded_pieces_as_it_is_rendered() {
    use crate::iptables::restore::{full_sync, Piece, Strategy};
    let ports = many_ports(2000);
    let mut pieces: Vec<String> = Vec::new();
    let mut ends = 0;
    let mut while_rendering = 0;
    let rendered = std::cell::Cell::new(0);
    let stale = BTreeSet::from([chain(Table::Nat, "SWY-SVC-GONE")]);
    let Ok(()) = full_sync(
        &base_rules(&cfg()),
        ports,
        &stale,
        Strategy::Single,
        &[(Table::Nat, "-I PREROUTING 1 -j SWY-SERVICES".to_owned())],
        |_, _| rendered.set(rendered.get() + 1),
        |piece| {
            match piece {
                Piece::Text(text) => {
                    assert_eq!(ends, 0, "text after the end");
                    // Ports are handed on while later ones are still to come.
                    if (1..2000).contains(&rendered.get()) {
                        while_rendering += 1;
                    }
                    pieces.push(text.to_owned());
                }
                Piece::End => ends += 1,
            }
            Ok::<(), std::convert::Infallible>(())
        },
    );
    assert_eq!(ends, 1, "one transaction");
    assert!(
        while_rendering > 10,
        "{while_rendering} pieces while rendering"
    );
    let total: usize = pieces.iter().map(String::len).sum();
    let largest = pieces.iter().map(String::len).max().unwrap_or_default();
    // The whole input never exists as one string: no piece holds more than a slice of it.
    assert!(total > 8 << 20, "{total} bytes");
    assert!(
        largest < 512 << 10,
        "largest piece {largest} of {total} bytes: {:?}",
        pieces.iter().map(String::len).collect::<Vec<_>>()
    );
    let input = pieces.concat();
    assert_declared_before_use(&input);
    // nat's chains are declared up front, in order (the stale one at the end, before -X).
    let nat = input.split("COMMIT\n").next().unwrap_or_default();
    let declared: Vec<&str> = nat
        .lines()
        .take_while(|l| !l.starts_with("-A "))
        .filter_map(|l| l.strip_prefix(':'))
        .collect();
    assert!(declared.len() > 2000 * 10, "{}", declared.len());
    assert!(declared.is_sorted(), "declarations out of order");
}

/// Every chain of ours a line appends to, jumps to or deletes is declared earlier in the same
/// table section, as iptables-restore needs (it resolves a jump target when it reads the rule).
fn assert_declared_before_use(input: &str) {
    let mut declared: BTreeSet<&str> = BTreeSet::new();
    let mut sections = 0;
    for line in input.lines() {
        if line.starts_with('*') {
            declared.clear();
            sections += 1;
            continue;
        }
        if let Some(name) = line.strip_prefix(':') {
            declared.insert(name.split(' ').next().unwrap_or_default());
            continue;
        }
        let words: Vec<&str> = line.split(' ').collect();
        let named = words.windows(2).filter_map(|w| match w[0] {
            "-A" | "-X" | "-j" | "-g" => Some(w[1]),
            _ => None,
        });
        for chain in named.filter(|c| c.starts_with("SWY-")) {
            assert!(
                declared.contains(chain),
                "{chain} used before declared: {line}"
            );
        }
    }
    assert!(sections >= 2, "nat and filter: {sections}");
    assert!(input.contains("-X SWY-SVC-GONE\n"), "stale chain deleted");
}
