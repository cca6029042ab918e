//! Service fields -> service ports and frontends.

use serde_json::{json, Value};

use super::fixtures::*;
use crate::{Frontend, FrontendKind, NodeContext, Protocol, TrafficPolicy};

#[test]
fn service_types_and_skips() {
    // (case, patch, number of ports, node port of the first port)
    let cases: Vec<(&str, Value, usize, Option<u16>)> = vec![
        ("type unset is ClusterIP", json!({}), 1, None),
        ("ClusterIP", json!({"spec": {"type": "ClusterIP"}}), 1, None),
        (
            "NodePort",
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}}),
            1,
            Some(30080),
        ),
        (
            "LoadBalancer",
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30081}]}}),
            1,
            Some(30081),
        ),
        (
            "LoadBalancer without node ports (allocateLoadBalancerNodePorts false)",
            json!({"spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false}}),
            1,
            None,
        ),
        (
            "nodePort on a ClusterIP service is ignored",
            json!({"spec": {"ports": [{"port": 80, "nodePort": 30080}]}}),
            1,
            None,
        ),
        (
            "ExternalName",
            json!({"spec": {"type": "ExternalName", "externalName": "db.example.com", "clusterIP": null}}),
            0,
            None,
        ),
        (
            "headless clusterIP None",
            json!({"spec": {"clusterIP": "None"}}),
            0,
            None,
        ),
        (
            "headless clusterIPs [None]",
            json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}}),
            0,
            None,
        ),
        (
            "meant for another proxy",
            json!({"metadata": {"labels": {"service.kubernetes.io/service-proxy-name": "other"}}}),
            0,
            None,
        ),
        (
            "labelled headless",
            json!({"metadata": {"labels": {"service.kubernetes.io/headless": ""}}}),
            0,
            None,
        ),
        ("no ports", json!({"spec": {"ports": []}}), 0, None),
    ];
    for (case, patch, count, node_port) in cases {
        let c = World::new().svc(service("web", patch)).compute(&node_v4());
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        assert_eq!(c.state.ports.len(), count, "{case}");
        if let Some(p) = c.state.ports.values().next() {
            assert_eq!(p.node_port, node_port, "{case}");
        }
    }
}

#[test]
fn headless_and_external_name_ignore_endpoints() {
    let slice_for = |svc: &str| {
        slice(
            &format!("{svc}-1"),
            svc,
            json!({"endpoints": [ready("198.18.0.1", NODE)]}),
        )
    };
    let c = World::new()
        .svc(service("headless", json!({"spec": {"clusterIP": "None"}})))
        .svc(service(
            "ext",
            json!({"spec": {"type": "ExternalName", "externalName": "x.example", "clusterIP": null}}),
        ))
        .slice(slice_for("headless"))
        .slice(slice_for("ext"))
        .compute(&node_v4());
    assert!(c.state.ports.is_empty());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn cluster_ips_per_served_family() {
    // (case, node, spec patch, served cluster IPs, warning fields)
    let cases: Vec<(&str, _, Value, Vec<&str>, Vec<&str>)> = vec![
        (
            "single IPv4",
            node_v4(),
            json!({}),
            vec!["198.18.128.10"],
            vec![],
        ),
        (
            "clusterIPs wins over clusterIP",
            node_v4(),
            json!({"clusterIPs": ["198.18.128.20"]}),
            vec!["198.18.128.20"],
            vec![],
        ),
        (
            "dual-stack service on dual-stack node",
            node_dual(),
            json!({"clusterIPs": ["198.18.128.10", "2001:db8:96::10"]}),
            vec!["198.18.128.10", "2001:db8:96::10"],
            vec![],
        ),
        (
            "IPv6 address on an IPv4-only node is dropped with a warning",
            node_v4(),
            json!({"clusterIPs": ["198.18.128.10", "2001:db8:96::10"]}),
            vec!["198.18.128.10"],
            vec!["spec.clusterIPs[1]"],
        ),
        (
            "IPv4 address on an IPv6-only node is dropped with a warning",
            node_v6(),
            json!({"clusterIP": "2001:db8:96::10", "clusterIPs": ["2001:db8:96::10", "198.18.128.10"]}),
            vec!["2001:db8:96::10"],
            vec!["spec.clusterIPs[1]"],
        ),
        (
            "leading zeros read as decimal, like Go",
            node_v4(),
            json!({"clusterIP": "198.018.128.010"}),
            vec!["198.18.128.10"],
            vec![],
        ),
        (
            "IPv4-mapped IPv6 is IPv4, like Go",
            node_v4(),
            json!({"clusterIP": "::ffff:198.18.128.10"}),
            vec!["198.18.128.10"],
            vec![],
        ),
    ];
    for (case, node, spec, want_ips, want_warnings) in cases {
        let c = World::new()
            .svc(service("web", json!({ "spec": spec })))
            .compute(&node);
        assert_eq!(warning_fields(&c), want_warnings, "{case}");
        let p = only_port(&c);
        assert_eq!(p.cluster_ips, ips(&want_ips), "{case}");
        let frontends: Vec<_> = p
            .frontends_of(FrontendKind::ClusterIp)
            .map(|f| f.ip)
            .collect();
        assert_eq!(frontends, ips(&want_ips), "{case}");
    }
}

#[test]
fn service_with_no_served_cluster_ip_is_skipped_with_one_warning() {
    let c = World::new()
        .svc(service(
            "v6only",
            json!({"spec": {"clusterIP": "2001:db8:96::10", "clusterIPs": ["2001:db8:96::10"]}}),
        ))
        .compute(&node_v4());
    assert!(c.state.ports.is_empty());
    assert_eq!(
        c.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![
            "Service default/v6only: spec.clusterIPs[0]: 2001:db8:96::10 is IPv6 but this node serves only IPv4; \
             the service has no cluster IP this node can serve"
        ]
    );
}

#[test]
fn node_port_frontends() {
    let mut multi = node_dual();
    multi.nodeport_addresses = ips(&["198.18.1.10", "198.18.0.5", "2001:db8::10"]);
    let mut narrow_range = node_v4();
    narrow_range.nodeport_range = 20000..=20100;
    // (case, node, patch, expected NodePort frontends)
    let cases: Vec<(&str, _, Value, Vec<&str>)> = vec![
        (
            "every node address of the service's family",
            multi.clone(),
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}}),
            vec!["198.18.0.5", "198.18.1.10"],
        ),
        (
            "dual-stack service uses both families",
            multi,
            json!({"spec": {
                "type": "NodePort",
                "clusterIPs": ["198.18.128.10", "2001:db8:96::10"],
                "ports": [{"port": 80, "nodePort": 30080}]
            }}),
            vec!["198.18.0.5", "198.18.1.10", "2001:db8::10"],
        ),
        (
            "IPv4 node ignores its IPv6 NodePort address",
            NodeContext {
                nodeport_addresses: ips(&["198.18.1.10", "2001:db8::10"]),
                ..node_v4()
            },
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080}]}}),
            vec!["198.18.1.10"],
        ),
        (
            "custom NodePort range",
            narrow_range,
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 20050}]}}),
            vec!["198.18.1.10"],
        ),
        (
            "ClusterIP type has none",
            node_v4(),
            json!({"spec": {"ports": [{"port": 80, "nodePort": 30080}]}}),
            vec![],
        ),
    ];
    for (case, node, patch, want) in cases {
        let c = World::new().svc(service("web", patch)).compute(&node);
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        let p = only_port(&c);
        let got: Vec<_> = p
            .frontends_of(FrontendKind::NodePort)
            .map(|f| f.ip)
            .collect();
        assert_eq!(got, ips(&want), "{case}");
        assert!(
            p.frontends_of(FrontendKind::NodePort)
                .all(|f| Some(f.port) == p.node_port),
            "{case}"
        );
    }
}

#[test]
fn external_ips() {
    // (case, node, spec patch, expected externalIPs, warning fields)
    let cases: Vec<(&str, _, Value, Vec<&str>, Vec<&str>)> = vec![
        (
            "on a ClusterIP service",
            node_v4(),
            json!({"externalIPs": ["203.0.113.7", "203.0.113.8"]}),
            vec!["203.0.113.7", "203.0.113.8"],
            vec![],
        ),
        (
            "IPv6 externalIP on an IPv4 node is dropped with a warning",
            node_v4(),
            json!({"externalIPs": ["2001:db8::7", "203.0.113.7"]}),
            vec!["203.0.113.7"],
            vec!["spec.externalIPs[0]"],
        ),
        (
            "family the service has no cluster IP for is dropped with a warning",
            node_dual(),
            json!({"externalIPs": ["2001:db8::7"]}),
            vec![],
            vec!["spec.externalIPs[0]"],
        ),
    ];
    for (case, node, spec, want, want_warnings) in cases {
        let c = World::new()
            .svc(service("web", json!({ "spec": spec })))
            .compute(&node);
        assert_eq!(warning_fields(&c), want_warnings, "{case}");
        let p = only_port(&c);
        assert_eq!(p.external_ips, ips(&want), "{case}");
        let frontends: Vec<Frontend> = p.frontends_of(FrontendKind::ExternalIp).copied().collect();
        let expected: Vec<Frontend> = ips(&want)
            .into_iter()
            .map(|ip| Frontend {
                kind: FrontendKind::ExternalIp,
                ip,
                port: 80,
            })
            .collect();
        assert_eq!(frontends, expected, "{case}");
    }
}

#[test]
fn load_balancer_ingress_ips() {
    let ingress = json!({"loadBalancer": {"ingress": [
        {"ip": "198.51.100.1"},
        {"ip": "198.51.100.2", "ipMode": "VIP"},
        {"ip": "198.51.100.3", "ipMode": "Proxy"},
        {"hostname": "lb.example.com"},
        {"ip": "2001:db8::1"}
    ]}});
    // (case, type, expected LB IPs, warning fields)
    let cases: Vec<(&str, &str, Vec<&str>, Vec<&str>)> = vec![
        (
            "LoadBalancer: VIP entries only, other family warned",
            "LoadBalancer",
            vec!["198.51.100.1", "198.51.100.2"],
            vec!["status.loadBalancer.ingress[4].ip"],
        ),
        ("NodePort ignores status", "NodePort", vec![], vec![]),
        ("ClusterIP ignores status", "ClusterIP", vec![], vec![]),
    ];
    for (case, svc_type, want, want_warnings) in cases {
        let s = service(
            "web",
            json!({"spec": {"type": svc_type, "ports": [{"port": 443, "nodePort": 30443}]}, "status": ingress}),
        );
        let c = World::new().svc(s).compute(&node_v4());
        assert_eq!(warning_fields(&c), want_warnings, "{case}");
        let p = only_port(&c);
        assert_eq!(p.load_balancer_ips, ips(&want), "{case}");
        let got: Vec<_> = p
            .frontends_of(FrontendKind::LoadBalancer)
            .map(|f| (f.ip, f.port))
            .collect();
        let expected: Vec<_> = ips(&want).into_iter().map(|ip| (ip, 443)).collect();
        assert_eq!(got, expected, "{case}");
    }
}

#[test]
fn unknown_ip_mode_drops_the_entry_with_a_warning() {
    let s = service(
        "web",
        json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [
            {"ip": "198.51.100.1", "ipMode": "Tunnel"}, {"ip": "198.51.100.2"}
        ]}}}),
    );
    let c = World::new().svc(s).compute(&node_v4());
    assert_eq!(
        warning_fields(&c),
        vec!["status.loadBalancer.ingress[0].ipMode"]
    );
    assert_eq!(only_port(&c).load_balancer_ips, ips(&["198.51.100.2"]));
}

#[test]
fn load_balancer_source_ranges() {
    // (case, type, ranges, expected)
    let cases: Vec<(&str, &str, Value, Vec<&str>)> = vec![
        (
            "trimmed of whitespace",
            "LoadBalancer",
            json!([" 198.18.0.0/15", "203.0.113.0/24 ", "\t2001:db8::/32\n"]),
            vec!["198.18.0.0/15", "203.0.113.0/24", "2001:db8::/32"],
        ),
        (
            "host bits cleared, like Go",
            "LoadBalancer",
            json!(["198.19.2.3/15"]),
            vec!["198.18.0.0/15"],
        ),
        ("none", "LoadBalancer", json!([]), vec![]),
        (
            "not a LoadBalancer: ignored, even when invalid",
            "NodePort",
            json!(["198.18.0.0/15", "bogus"]),
            vec![],
        ),
    ];
    for (case, svc_type, ranges, want) in cases {
        let s = service(
            "web",
            json!({"spec": {"type": svc_type, "loadBalancerSourceRanges": ranges}}),
        );
        let c = World::new().svc(s).compute(&node_v4());
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        let want: Vec<ipnet::IpNet> = want.iter().map(|t| t.parse().expect("literal")).collect();
        assert_eq!(only_port(&c).load_balancer_source_ranges, want, "{case}");
    }
}

#[test]
fn session_affinity() {
    let cases: Vec<(&str, Value, Option<u32>)> = vec![
        ("unset", json!({}), None),
        ("None", json!({"sessionAffinity": "None"}), None),
        (
            "None ignores a config",
            json!({"sessionAffinity": "None", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}}),
            None,
        ),
        (
            "ClientIP defaults to 3 hours",
            json!({"sessionAffinity": "ClientIP"}),
            Some(10800),
        ),
        (
            "ClientIP with empty config",
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {}}),
            Some(10800),
        ),
        (
            "ClientIP timeout",
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
            Some(60),
        ),
        (
            "ClientIP maximum",
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}}}),
            Some(86400),
        ),
        (
            "ClientIP minimum",
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 1}}}),
            Some(1),
        ),
    ];
    for (case, spec, want) in cases {
        let c = World::new()
            .svc(service("web", json!({ "spec": spec })))
            .compute(&node_v4());
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        assert_eq!(only_port(&c).session_affinity_timeout, want, "{case}");
    }
}

#[test]
fn traffic_policies_and_health_check_port() {
    use TrafficPolicy::{Cluster, Local};
    // (case, spec patch, external, internal, healthCheckNodePort)
    let cases: Vec<(&str, Value, TrafficPolicy, TrafficPolicy, Option<u16>)> = vec![
        ("defaults", json!({}), Cluster, Cluster, None),
        (
            "explicit Cluster",
            json!({"externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster"}),
            Cluster,
            Cluster,
            None,
        ),
        (
            "internal Local",
            json!({"internalTrafficPolicy": "Local"}),
            Cluster,
            Local,
            None,
        ),
        (
            "NodePort external Local",
            json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
            Local,
            Cluster,
            None,
        ),
        (
            "external Local on a plain ClusterIP service means nothing",
            json!({"externalTrafficPolicy": "Local"}),
            Cluster,
            Cluster,
            None,
        ),
        (
            "ClusterIP with externalIPs honours external Local",
            json!({"externalTrafficPolicy": "Local", "externalIPs": ["203.0.113.7"]}),
            Local,
            Cluster,
            None,
        ),
        (
            "LoadBalancer Local gets its health check port",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}),
            Local,
            Cluster,
            Some(32000),
        ),
        (
            "LoadBalancer Cluster has no health check port",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "healthCheckNodePort": 32000}),
            Cluster,
            Cluster,
            None,
        ),
        (
            "NodePort Local has no health check port",
            json!({"type": "NodePort", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}),
            Local,
            Cluster,
            None,
        ),
        (
            "LoadBalancer Local without an allocated port",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}),
            Local,
            Cluster,
            None,
        ),
    ];
    for (case, spec, external, internal, hc) in cases {
        let c = World::new()
            .svc(service("web", json!({ "spec": spec })))
            .compute(&node_v4());
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        let p = only_port(&c);
        assert_eq!(p.external_traffic_policy, external, "{case}");
        assert_eq!(p.internal_traffic_policy, internal, "{case}");
        assert_eq!(p.health_check_node_port, hc, "{case}");
    }
}

#[test]
fn protocols_and_port_keys() {
    use Protocol::{Sctp, Tcp, Udp};
    // (case, ports, expected keys as (port name, protocol, port), warning fields)
    let cases: Vec<(&str, Value, Vec<(&str, Protocol, u16)>, Vec<&str>)> = vec![
        (
            "protocol defaults to TCP",
            json!([{"port": 80}]),
            vec![("", Tcp, 80)],
            vec![],
        ),
        (
            "UDP",
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}]),
            vec![("dns", Udp, 53)],
            vec![],
        ),
        (
            "same name on TCP and UDP are two ports",
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns", "port": 53, "protocol": "TCP"}]),
            vec![("dns", Tcp, 53), ("dns", Udp, 53)],
            vec![],
        ),
        (
            "SCTP is a port like the others",
            json!([{"name": "http", "port": 80}, {"name": "sig", "port": 3868, "protocol": "SCTP"}]),
            vec![("http", Tcp, 80), ("sig", Sctp, 3868)],
            vec![],
        ),
        (
            "only SCTP",
            json!([{"port": 3868, "protocol": "SCTP"}]),
            vec![("", Sctp, 3868)],
            vec![],
        ),
        (
            "same name on TCP and SCTP are two ports",
            json!([{"name": "diameter", "port": 3868, "protocol": "SCTP"}, {"name": "diameter", "port": 3868}]),
            vec![("diameter", Tcp, 3868), ("diameter", Sctp, 3868)],
            vec![],
        ),
    ];
    for (case, ports, want, want_warnings) in cases {
        let c = World::new()
            .svc(service("web", json!({"spec": {"ports": ports}})))
            .compute(&node_v4());
        assert_eq!(warning_fields(&c), want_warnings, "{case}");
        let got: Vec<_> = c
            .state
            .ports
            .values()
            .map(|p| (p.key.port_name.as_str(), p.key.protocol, p.port))
            .collect();
        assert_eq!(got, want, "{case}");
        for (k, p) in &c.state.ports {
            assert_eq!(k, &p.key, "{case}");
        }
    }
}

#[test]
fn service_port_key_display() {
    let cases = [
        (key("web", "http", Protocol::Tcp), "default/web:http/TCP"),
        (key("web", "", Protocol::Udp), "default/web/UDP"),
        (key("dns", "dns", Protocol::Udp), "default/dns:dns/UDP"),
    ];
    for (k, want) in cases {
        assert_eq!(k.to_string(), want);
        assert_eq!(k.service().to_string(), format!("default/{}", k.name));
    }
}

#[test]
fn frontends_are_sorted_and_complete() {
    let s = service(
        "web",
        json!({
            "spec": {
                "type": "LoadBalancer",
                "externalIPs": ["203.0.113.7"],
                "ports": [{"name": "https", "port": 443, "nodePort": 30443}]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}
        }),
    );
    let c = World::new().svc(s).compute(&node_v4());
    let p = only_port(&c);
    let f = |kind, ip_text: &str, port| Frontend {
        kind,
        ip: ip(ip_text),
        port,
    };
    assert_eq!(
        p.frontends,
        vec![
            f(FrontendKind::ClusterIp, "198.18.128.10", 443),
            f(FrontendKind::NodePort, "198.18.1.10", 30443),
            f(FrontendKind::ExternalIp, "203.0.113.7", 443),
            f(FrontendKind::LoadBalancer, "198.51.100.1", 443),
        ]
    );
    assert!(p.externally_accessible());
}

#[test]
fn yaml_manifest_scenario() {
    let svc: k8s_openapi::api::core::v1::Service = from_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
spec:
  type: NodePort
  clusterIP: 198.18.133.5
  selector: { app: api }
  sessionAffinity: ClientIP
  ports:
    - name: http
      port: 80
      targetPort: web
      nodePort: 31000
    - name: grpc
      port: 9000
      protocol: TCP
"#,
    );
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice = from_yaml(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-x7k2p
  namespace: shop
  labels: { kubernetes.io/service-name: api }
addressType: IPv4
ports:
  - { name: http, port: 8080, protocol: TCP }
  - { name: grpc, port: 9090 }
endpoints:
  - addresses: [198.19.1.7]
    nodeName: node-a
    conditions: { ready: true }
  - addresses: [198.19.2.9]
    nodeName: node-b
"#,
    );
    let c = World::new().svc(svc).slice(slice).compute(&node_v4());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let keys: Vec<String> = c.state.ports.keys().map(ToString::to_string).collect();
    assert_eq!(keys, vec!["shop/api:grpc/TCP", "shop/api:http/TCP"]);
    let http = c
        .state
        .ports
        .values()
        .find(|p| p.key.port_name == "http")
        .expect("http port");
    assert_eq!(
        addrs(&http.endpoints),
        vec!["198.19.1.7:8080", "198.19.2.9:8080"]
    );
    assert_eq!(addrs(http.local_endpoints()), vec!["198.19.1.7:8080"]);
    assert_eq!(http.session_affinity_timeout, Some(10800));
    assert_eq!(http.node_port, Some(31000));
    let grpc = c
        .state
        .ports
        .values()
        .find(|p| p.key.port_name == "grpc")
        .expect("grpc port");
    assert_eq!(
        addrs(&grpc.endpoints),
        vec!["198.19.1.7:9090", "198.19.2.9:9090"]
    );
    assert_eq!(grpc.node_port, None);
}
