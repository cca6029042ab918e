//! EndpointSlices and legacy Endpoints -> endpoints of service ports.

use serde_json::{json, Value};

use super::fixtures::*;
use crate::{Endpoint, Protocol};

/// Service `web` with ports http (80, TCP) and dns (53, UDP).
fn web() -> k8s_openapi::api::core::v1::Service {
    service(
        "web",
        json!({"spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "dns", "port": 53, "protocol": "UDP"}
        ]}}),
    )
}

#[test]
fn slice_condition_defaults_match_upstream() {
    // (case, conditions, ready, serving, terminating)
    let cases: Vec<(&str, Value, bool, bool, bool)> = vec![
        ("no conditions object", Value::Null, true, true, false),
        ("empty conditions", json!({}), true, true, false),
        ("ready", json!({"ready": true}), true, true, false),
        (
            "not ready, serving unset",
            json!({"ready": false}),
            false,
            true,
            false,
        ),
        (
            "terminating and serving",
            json!({"ready": false, "serving": true, "terminating": true}),
            false,
            true,
            true,
        ),
        (
            "terminating, not serving",
            json!({"ready": false, "serving": false, "terminating": true}),
            false,
            false,
            true,
        ),
        (
            "explicitly not terminating",
            json!({"terminating": false}),
            true,
            true,
            false,
        ),
    ];
    for (case, conditions, ready, serving, terminating) in cases {
        let mut entry = json!({"addresses": ["198.18.0.1"], "nodeName": "node-b"});
        if !conditions.is_null() {
            merge(&mut entry, json!({ "conditions": conditions }));
        }
        let c = World::new()
            .svc(service("web", json!({})))
            .slice(slice("web-1", "web", json!({"endpoints": [entry]})))
            .compute(&node_v4());
        let p = only_port(&c);
        assert_eq!(
            p.endpoints,
            vec![Endpoint {
                ip: ip("198.18.0.1"),
                port: 8080,
                ready,
                serving,
                terminating,
                local: false,
                node_name: Some("node-b".to_owned()),
                hints: None,
            }],
            "{case}"
        );
    }
}

#[test]
fn slices_join_services_by_label() {
    // (case, slice, expected endpoints of default/web, warning fields)
    let cases: Vec<(&str, _, Vec<&str>, Vec<&str>)> = vec![
        (
            "labelled for web",
            slice(
                "web-1",
                "web",
                json!({"endpoints": [ready("198.18.0.1", "n")]}),
            ),
            vec!["198.18.0.1:8080"],
            vec![],
        ),
        (
            "labelled for another service",
            slice(
                "other-1",
                "other",
                json!({"endpoints": [ready("198.18.0.1", "n")]}),
            ),
            vec![],
            vec![],
        ),
        (
            "name looks like web's but no label",
            slice(
                "web-2",
                "web",
                json!({"metadata": {"labels": null}, "endpoints": [ready("198.18.0.1", "n")]}),
            ),
            vec![],
            vec!["metadata.labels[kubernetes.io/service-name]"],
        ),
        (
            "same service name in another namespace",
            slice(
                "web-3",
                "web",
                json!({"metadata": {"namespace": "prod"}, "endpoints": [ready("198.18.0.1", "n")]}),
            ),
            vec![],
            vec![],
        ),
        (
            "headless-labelled slice ignored",
            slice(
                "web-4",
                "web",
                json!({
                    "metadata": {"labels": {"service.kubernetes.io/headless": ""}},
                    "endpoints": [ready("198.18.0.1", "n")]
                }),
            ),
            vec![],
            vec![],
        ),
        (
            "slice meant for another proxy ignored",
            slice(
                "web-5",
                "web",
                json!({
                    "metadata": {"labels": {"service.kubernetes.io/service-proxy-name": "x"}},
                    "endpoints": [ready("198.18.0.1", "n")]
                }),
            ),
            vec![],
            vec![],
        ),
    ];
    for (case, s, want, want_warnings) in cases {
        let c = World::new()
            .svc(service("web", json!({})))
            .slice(s)
            .compute(&node_v4());
        assert_eq!(warning_fields(&c), want_warnings, "{case}");
        assert_eq!(addrs(&only_port(&c).endpoints), want, "{case}");
    }
}

#[test]
fn address_types_and_families() {
    let v4 = slice(
        "web-v4",
        "web",
        json!({"endpoints": [ready("198.18.0.1", "n")]}),
    );
    let v6 = slice(
        "web-v6",
        "web",
        json!({"addressType": "IPv6", "endpoints": [ready("2001:db8::1", "n")]}),
    );
    let fqdn = slice(
        "web-fqdn",
        "web",
        json!({"addressType": "FQDN", "endpoints": [ready("db.example.com", "n")]}),
    );
    let dual_svc = service(
        "web",
        json!({"spec": {"clusterIPs": ["198.18.128.10", "2001:db8:96::10"]}}),
    );
    // (case, node, service, expected endpoints, warning fields). Slices of an unserved
    // family are silent; only the service's unserved cluster IP is reported.
    let cases: Vec<(&str, _, _, Vec<&str>, Vec<&str>)> = vec![
        (
            "IPv4 node uses IPv4 slices only",
            node_v4(),
            dual_svc.clone(),
            vec!["198.18.0.1:8080"],
            vec!["spec.clusterIPs[1]"],
        ),
        (
            "IPv6 node uses IPv6 slices only",
            node_v6(),
            dual_svc.clone(),
            vec!["[2001:db8::1]:8080"],
            vec!["spec.clusterIPs[0]"],
        ),
        (
            "dual-stack node and service use both",
            node_dual(),
            dual_svc,
            vec!["198.18.0.1:8080", "[2001:db8::1]:8080"],
            vec![],
        ),
        (
            "dual-stack node, IPv4-only service: IPv6 endpoints unreachable",
            node_dual(),
            service("web", json!({})),
            vec!["198.18.0.1:8080"],
            vec![],
        ),
    ];
    for (case, node, svc, want, want_warnings) in cases {
        let c = World::new()
            .svc(svc)
            .slice(v4.clone())
            .slice(v6.clone())
            .slice(fqdn.clone())
            .compute(&node);
        assert_eq!(warning_fields(&c), want_warnings, "{case}");
        assert_eq!(addrs(&only_port(&c).endpoints), want, "{case}");
    }
}

#[test]
fn slices_merge_and_duplicates_dedupe() {
    let not_ready = |ip: &str| ep(ip, "n", json!({"ready": false, "serving": false}));
    let serving = |ip: &str| {
        ep(
            ip,
            "n",
            json!({"ready": false, "serving": true, "terminating": true}),
        )
    };
    // (case, slice A endpoints, slice B endpoints, expected (ip:port, ready, serving))
    let cases: Vec<(&str, Value, Value, Vec<(&str, bool, bool)>)> = vec![
        (
            "two slices merge, sorted",
            json!([ready("198.18.0.3", "n")]),
            json!([ready("198.18.0.1", "n"), ready("198.18.0.2", "n")]),
            vec![
                ("198.18.0.1:8080", true, true),
                ("198.18.0.2:8080", true, true),
                ("198.18.0.3:8080", true, true),
            ],
        ),
        (
            "duplicate prefers ready (ready second)",
            json!([not_ready("198.18.0.1")]),
            json!([ready("198.18.0.1", "n")]),
            vec![("198.18.0.1:8080", true, true)],
        ),
        (
            "duplicate prefers ready (ready first)",
            json!([ready("198.18.0.1", "n")]),
            json!([not_ready("198.18.0.1")]),
            vec![("198.18.0.1:8080", true, true)],
        ),
        (
            "duplicate prefers serving over not serving",
            json!([not_ready("198.18.0.1")]),
            json!([serving("198.18.0.1")]),
            vec![("198.18.0.1:8080", false, true)],
        ),
        (
            "duplicate within one slice",
            json!([not_ready("198.18.0.1"), ready("198.18.0.1", "n")]),
            json!([]),
            vec![("198.18.0.1:8080", true, true)],
        ),
    ];
    for (case, a, b, want) in cases {
        let c = World::new()
            .svc(service("web", json!({})))
            .slice(slice("web-a", "web", json!({ "endpoints": a })))
            .slice(slice("web-b", "web", json!({ "endpoints": b })))
            .compute(&node_v4());
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        let p = only_port(&c);
        let got: Vec<(String, bool, bool)> = p
            .endpoints
            .iter()
            .map(|e| (format!("{}:{}", e.ip, e.port), e.ready, e.serving))
            .collect();
        let want: Vec<(String, bool, bool)> = want
            .into_iter()
            .map(|(a, r, s)| (a.to_owned(), r, s))
            .collect();
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn same_ip_on_different_target_ports_are_distinct() {
    // Two slices resolve the named port differently (a rolling update changing containerPort).
    let c = World::new()
        .svc(web())
        .slice(slice(
            "web-a",
            "web",
            json!({"ports": [{"name": "http", "port": 8080}], "endpoints": [ready("198.18.0.1", "n")]}),
        ))
        .slice(slice(
            "web-b",
            "web",
            json!({"ports": [{"name": "http", "port": 8081}], "endpoints": [ready("198.18.0.1", "n")]}),
        ))
        .compute(&node_v4());
    let http = &c.state.ports[&key("web", "http", Protocol::Tcp)];
    assert_eq!(
        addrs(&http.endpoints),
        vec!["198.18.0.1:8080", "198.18.0.1:8081"]
    );
}

#[test]
fn target_ports_resolve_by_name_and_protocol() {
    // (case, slice ports, expected http endpoints, expected dns endpoints)
    let cases: Vec<(&str, Value, Vec<&str>, Vec<&str>)> = vec![
        (
            "named ports map to different numbers",
            json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            vec!["198.18.0.1:8080"],
            vec!["198.18.0.1:5353"],
        ),
        (
            "protocol must match",
            json!([{"name": "http", "port": 8080, "protocol": "UDP"}, {"name": "dns", "port": 5353, "protocol": "TCP"}]),
            vec![],
            vec![],
        ),
        (
            "name must match",
            json!([{"name": "web", "port": 8080}]),
            vec![],
            vec![],
        ),
        (
            "slice port without a number matches nothing",
            json!([{"name": "http"}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
            vec![],
            vec!["198.18.0.1:53"],
        ),
        (
            "an SCTP slice port does not match a TCP one of the same name",
            json!([{"name": "http", "port": 8080, "protocol": "SCTP"}]),
            vec![],
            vec![],
        ),
        ("no ports", json!([]), vec![], vec![]),
    ];
    for (case, ports, http_want, dns_want) in cases {
        let c = World::new()
            .svc(web())
            .slice(slice(
                "web-1",
                "web",
                json!({"ports": ports, "endpoints": [ready("198.18.0.1", "n")]}),
            ))
            .compute(&node_v4());
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        let http = &c.state.ports[&key("web", "http", Protocol::Tcp)];
        let dns = &c.state.ports[&key("web", "dns", Protocol::Udp)];
        assert_eq!(addrs(&http.endpoints), http_want, "{case}");
        assert_eq!(addrs(&dns.endpoints), dns_want, "{case}");
    }
}

#[test]
fn sctp_ports_get_their_sctp_endpoints_from_slices_and_legacy_endpoints() {
    // A service with the same port name over SCTP and TCP (Diameter): each protocol gets the
    // slice port of its own protocol only.
    let diameter = |name: &str, ip: &str| {
        service(
            name,
            json!({"spec": {"clusterIP": ip, "ports": [
                {"name": "diameter", "port": 3868, "protocol": "SCTP"},
                {"name": "diameter", "port": 3868, "protocol": "TCP"}
            ]}}),
        )
    };
    let c = World::new()
        .svc(diameter("sig", "198.18.128.10"))
        .slice(slice(
            "sig-1",
            "sig",
            json!({"ports": [
                {"name": "diameter", "port": 13868, "protocol": "SCTP"},
                {"name": "diameter", "port": 23868, "protocol": "TCP"}
            ], "endpoints": [ready("198.18.0.1", "n")]}),
        ))
        .svc(diameter("legacy", "198.18.128.11"))
        .legacy(legacy(
            "legacy",
            json!({"subsets": [{
                "addresses": [{"ip": "198.18.0.2"}],
                "ports": [{"name": "diameter", "port": 13868, "protocol": "SCTP"}]
            }]}),
        ))
        .compute(&node_v4());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let port = |svc: &str, protocol| &c.state.ports[&key(svc, "diameter", protocol)];
    assert_eq!(
        addrs(&port("sig", Protocol::Sctp).endpoints),
        vec!["198.18.0.1:13868"]
    );
    assert_eq!(
        addrs(&port("sig", Protocol::Tcp).endpoints),
        vec!["198.18.0.1:23868"]
    );
    assert_eq!(
        addrs(&port("legacy", Protocol::Sctp).endpoints),
        vec!["198.18.0.2:13868"]
    );
    assert!(port("legacy", Protocol::Tcp).endpoints.is_empty());
}

#[test]
fn unnamed_ports_match_unnamed_slice_ports() {
    // (case, slice ports, expected)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "name absent",
            json!([{"port": 9000}]),
            vec!["198.18.0.1:9000"],
        ),
        (
            "name empty",
            json!([{"name": "", "port": 9000}]),
            vec!["198.18.0.1:9000"],
        ),
        (
            "named slice port",
            json!([{"name": "http", "port": 9000}]),
            vec![],
        ),
    ];
    for (case, ports, want) in cases {
        let c = World::new()
            .svc(service("web", json!({})))
            .slice(slice(
                "web-1",
                "web",
                json!({"ports": ports, "endpoints": [ready("198.18.0.1", "n")]}),
            ))
            .compute(&node_v4());
        assert_eq!(addrs(&only_port(&c).endpoints), want, "{case}");
    }
}

#[test]
fn local_is_node_name_equality() {
    // (case, node name on the endpoint, node context name, local?)
    let cases: Vec<(&str, Value, &str, bool)> = vec![
        ("same node", json!("node-a"), "node-a", true),
        ("other node", json!("node-b"), "node-a", false),
        ("no nodeName", Value::Null, "node-a", false),
        (
            "empty node context name never matches",
            json!(""),
            "",
            false,
        ),
    ];
    for (case, node_name, ctx_name, want) in cases {
        let mut entry = json!({"addresses": ["198.18.0.1"]});
        if !node_name.is_null() {
            merge(&mut entry, json!({ "nodeName": node_name }));
        }
        let mut node = node_v4();
        node.name = ctx_name.to_owned();
        let c = World::new()
            .svc(service("web", json!({})))
            .slice(slice("web-1", "web", json!({"endpoints": [entry]})))
            .compute(&node);
        let p = only_port(&c);
        assert_eq!(p.endpoints.len(), 1, "{case}");
        assert_eq!(p.endpoints[0].local, want, "{case}");
    }
}

#[test]
fn legacy_endpoints() {
    // (case, subsets, expected http endpoints as (ip:port, ready, serving), warning fields)
    let cases: Vec<(&str, Value, Vec<(&str, bool, bool)>, Vec<&str>)> = vec![
        (
            "ready and not-ready addresses",
            json!([{
                "addresses": [{"ip": "198.18.0.2", "nodeName": "node-a"}, {"ip": "198.18.0.1"}],
                "notReadyAddresses": [{"ip": "198.18.0.3"}],
                "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]
            }]),
            vec![
                ("198.18.0.1:8080", true, true),
                ("198.18.0.2:8080", true, true),
                ("198.18.0.3:8080", false, false),
            ],
            vec![],
        ),
        (
            "subsets with different ports",
            json!([
                {"addresses": [{"ip": "198.18.0.1"}], "ports": [{"name": "http", "port": 8080}]},
                {"addresses": [{"ip": "198.18.0.2"}], "ports": [{"name": "http", "port": 9090}]}
            ]),
            vec![
                ("198.18.0.1:8080", true, true),
                ("198.18.0.2:9090", true, true),
            ],
            vec![],
        ),
        (
            "protocol must match",
            json!([{"addresses": [{"ip": "198.18.0.1"}], "ports": [{"name": "http", "port": 8080, "protocol": "UDP"}]}]),
            vec![],
            vec![],
        ),
        (
            "IPv6 address on an IPv4 node dropped with a warning",
            json!([{"addresses": [{"ip": "2001:db8::1"}, {"ip": "198.18.0.1"}], "ports": [{"name": "http", "port": 8080}]}]),
            vec![("198.18.0.1:8080", true, true)],
            vec!["subsets[0].addresses[0].ip"],
        ),
        ("no subsets", json!([]), vec![], vec![]),
    ];
    for (case, subsets, want, want_warnings) in cases {
        let c = World::new()
            .svc(web())
            .legacy(legacy("web", json!({ "subsets": subsets })))
            .compute(&node_v4());
        assert_eq!(warning_fields(&c), want_warnings, "{case}");
        let http = &c.state.ports[&key("web", "http", Protocol::Tcp)];
        let got: Vec<(String, bool, bool)> = http
            .endpoints
            .iter()
            .map(|e| (format!("{}:{}", e.ip, e.port), e.ready, e.serving))
            .collect();
        let want: Vec<(String, bool, bool)> = want
            .into_iter()
            .map(|(a, r, s)| (a.to_owned(), r, s))
            .collect();
        assert_eq!(got, want, "{case}");
        assert!(http.endpoints.iter().all(|e| !e.terminating), "{case}");
    }
}

#[test]
fn legacy_endpoints_local_and_other_namespace() {
    let subsets = json!([{
        "addresses": [{"ip": "198.18.0.1", "nodeName": "node-a"}],
        "ports": [{"name": "http", "port": 8080}]
    }]);
    let c = World::new()
        .svc(web())
        .legacy(legacy("web", json!({ "subsets": subsets.clone() })))
        .legacy(legacy(
            "web",
            json!({ "metadata": {"namespace": "prod"}, "subsets": subsets }),
        ))
        .compute(&node_v4());
    let http = &c.state.ports[&key("web", "http", Protocol::Tcp)];
    assert_eq!(addrs(&http.endpoints), vec!["198.18.0.1:8080"]);
    assert!(http.endpoints[0].local);
}

#[test]
fn slices_win_over_legacy_endpoints() {
    let legacy_eps = legacy(
        "web",
        json!({"subsets": [{"addresses": [{"ip": "198.18.9.9"}], "ports": [{"port": 8080}]}]}),
    );
    // (case, slice, expected)
    let cases: Vec<(&str, Option<_>, Vec<&str>)> = vec![
        ("no slice: legacy used", None, vec!["198.18.9.9:8080"]),
        (
            "slice present: legacy ignored",
            Some(slice(
                "web-1",
                "web",
                json!({"endpoints": [ready("198.18.0.1", "n")]}),
            )),
            vec!["198.18.0.1:8080"],
        ),
        (
            "empty slice still wins",
            Some(slice("web-1", "web", json!({}))),
            vec![],
        ),
    ];
    for (case, s, want) in cases {
        let mut w = World::new()
            .svc(service("web", json!({})))
            .legacy(legacy_eps.clone());
        if let Some(s) = s {
            w = w.slice(s);
        }
        let c = w.compute(&node_v4());
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        assert_eq!(addrs(&only_port(&c).endpoints), want, "{case}");
    }
}
