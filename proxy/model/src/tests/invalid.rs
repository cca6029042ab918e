//! Bad input: the broken object is skipped with one warning, everything else keeps working,
//! and nothing panics.

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use super::fixtures::*;
use crate::{compute_desired_state, ClusterObjects, Computed};

/// The healthy service every case runs beside, with its own slice.
fn good_world() -> World {
    World::new()
        .svc(service(
            "good",
            json!({"spec": {"clusterIP": "198.18.128.1"}}),
        ))
        .slice(slice(
            "good-1",
            "good",
            json!({"endpoints": [ready("198.18.1.1", NODE)]}),
        ))
}

fn good_alone() -> Computed {
    good_world().compute(&node_v4())
}

/// Asserts that `c` holds exactly `want` as warnings and that service `good` came out exactly
/// as it does alone.
fn assert_isolated(case: &str, c: &Computed, want: &[&str]) {
    let got: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(got, want, "{case}");
    let alone = good_alone();
    for (k, p) in &alone.state.ports {
        assert_eq!(
            c.state.ports.get(k),
            Some(p),
            "{case}: good service changed"
        );
    }
}

#[test]
fn invalid_services_are_skipped_with_one_warning() {
    let np = |n: i64| json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": n}]}});
    let lb = |spec: Value| {
        let mut base = json!({"spec": {"type": "LoadBalancer"}});
        merge(&mut base, json!({ "spec": spec }));
        base
    };
    let affinity = |t: i64| json!({"spec": {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": t}}}});
    // (case, patch of service default/bad, the one expected warning)
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "port 0",
            json!({"spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 0}]}}),
            "Service default/bad: spec.ports[1].port: 0 is not a valid port number (1-65535)",
        ),
        (
            "port above 65535",
            json!({"spec": {"ports": [{"port": 65536}]}}),
            "Service default/bad: spec.ports[0].port: 65536 is not a valid port number (1-65535)",
        ),
        (
            "negative port",
            json!({"spec": {"ports": [{"port": -1}]}}),
            "Service default/bad: spec.ports[0].port: -1 is not a valid port number (1-65535)",
        ),
        (
            "unknown protocol",
            json!({"spec": {"ports": [{"port": 80, "protocol": "HTTP"}]}}),
            "Service default/bad: spec.ports[0].protocol: unknown protocol \"HTTP\" (expected TCP, UDP or SCTP)",
        ),
        (
            // Found by the model fuzz target: the name reached warnings (and every log line
            // naming the port) unescaped.
            "port name with a newline",
            json!({"spec": {"ports": [{"name": "a\nWARN forged", "port": 80}]}}),
            "Service default/bad: spec.ports[0].name: \"a\\nWARN forged\" contains control characters (a port name is a DNS label)",
        ),
        (
            "duplicate port name",
            json!({"spec": {"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}}),
            "Service default/bad: spec.ports[1].name: duplicate port name \"a\" for protocol TCP",
        ),
        (
            "nodePort above the range",
            np(40000),
            "Service default/bad: spec.ports[0].nodePort: 40000 is outside the NodePort range 30000-32767",
        ),
        (
            "nodePort below the range",
            np(80),
            "Service default/bad: spec.ports[0].nodePort: 80 is outside the NodePort range 30000-32767",
        ),
        (
            "nodePort not a port at all",
            np(-5),
            "Service default/bad: spec.ports[0].nodePort: -5 is outside the NodePort range 30000-32767",
        ),
        (
            "unparsable clusterIP",
            json!({"spec": {"clusterIP": "198.18.128.300"}}),
            "Service default/bad: spec.clusterIP: \"198.18.128.300\" is not a valid IP address",
        ),
        (
            "unparsable second clusterIPs entry",
            json!({"spec": {"clusterIPs": ["198.18.128.10", "2001:db8::zz"]}}),
            "Service default/bad: spec.clusterIPs[1]: \"2001:db8::zz\" is not a valid IP address",
        ),
        (
            "two cluster IPs of one family",
            json!({"spec": {"clusterIPs": ["198.18.128.10", "198.18.128.11"]}}),
            "Service default/bad: spec.clusterIPs[1]: second IPv4 cluster IP 198.18.128.11; at most one per family",
        ),
        (
            "no cluster IP",
            json!({"spec": {"clusterIP": null}}),
            "Service default/bad: spec.clusterIP: no cluster IP; the API server allocates one, in manifests it must be set",
        ),
        (
            "unknown type",
            json!({"spec": {"type": "Ingress"}}),
            "Service default/bad: spec.type: unknown service type \"Ingress\" (expected ClusterIP, NodePort, LoadBalancer or ExternalName)",
        ),
        (
            "unparsable externalIP",
            json!({"spec": {"externalIPs": ["203.0.113.7", "example.com"]}}),
            "Service default/bad: spec.externalIPs[1]: \"example.com\" is not a valid IP address",
        ),
        (
            "unparsable ingress IP",
            {
                let mut v = lb(json!({}));
                merge(&mut v, json!({"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3"}]}}}));
                v
            },
            "Service default/bad: status.loadBalancer.ingress[0].ip: \"1.2.3\" is not a valid IP address",
        ),
        (
            "source range prefix too long",
            lb(json!({"loadBalancerSourceRanges": ["198.18.0.0/15", " 198.18.0.0/33 "]})),
            "Service default/bad: spec.loadBalancerSourceRanges[1]: \"198.18.0.0/33\" is not a valid CIDR",
        ),
        (
            "source range without prefix",
            lb(json!({"loadBalancerSourceRanges": ["198.18.0.1"]})),
            "Service default/bad: spec.loadBalancerSourceRanges[0]: \"198.18.0.1\" is not a valid CIDR",
        ),
        (
            "affinity timeout 0",
            affinity(0),
            "Service default/bad: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is not a valid timeout (1-86400 seconds)",
        ),
        (
            "affinity timeout above a day",
            affinity(86401),
            "Service default/bad: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is not a valid timeout (1-86400 seconds)",
        ),
        (
            "unknown session affinity",
            json!({"spec": {"sessionAffinity": "Cookie"}}),
            "Service default/bad: spec.sessionAffinity: unknown session affinity \"Cookie\" (expected None or ClientIP)",
        ),
        (
            "unknown external traffic policy",
            json!({"spec": {"externalTrafficPolicy": "Global"}}),
            "Service default/bad: spec.externalTrafficPolicy: unknown traffic policy \"Global\" (expected Cluster or Local)",
        ),
        (
            "unknown internal traffic policy",
            json!({"spec": {"internalTrafficPolicy": "Node"}}),
            "Service default/bad: spec.internalTrafficPolicy: unknown traffic policy \"Node\" (expected Cluster or Local)",
        ),
        (
            "health check port above 65535",
            lb(json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 70000})),
            "Service default/bad: spec.healthCheckNodePort: 70000 is not a valid port number (1-65535)",
        ),
        (
            "several problems: only the first is reported, soft ones dropped",
            json!({"spec": {
                "clusterIPs": ["198.18.128.10", "2001:db8::10"],
                "ports": [{"port": 3868, "protocol": "SCTP"}, {"port": 0}, {"port": 80, "protocol": "XTP"}]
            }}),
            "Service default/bad: spec.ports[1].port: 0 is not a valid port number (1-65535)",
        ),
    ];
    for (case, patch, want) in cases {
        let c = good_world()
            .svc(service("bad", patch))
            .slice(slice(
                "bad-1",
                "bad",
                json!({"endpoints": [ready("198.18.2.1", NODE)]}),
            ))
            .compute(&node_v4());
        assert_isolated(case, &c, &[want]);
        assert!(
            c.state.ports.keys().all(|k| k.name != "bad"),
            "{case}: bad service kept"
        );
    }
}

#[test]
fn invalid_slices_are_skipped_with_one_warning() {
    let eps = json!([ready("198.18.1.2", "n"), ready("198.18.1.3", "n"), {"addresses": ["198.18.1.999"]}]);
    // (case, patch of slice default/good-bad (for service good), the one expected warning)
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unparsable endpoint address",
            json!({"endpoints": eps}),
            "EndpointSlice default/good-bad: endpoints[2].addresses[0]: \"198.18.1.999\" is not a valid IP address",
        ),
        (
            "endpoint without addresses",
            json!({"endpoints": [{"addresses": []}]}),
            "EndpointSlice default/good-bad: endpoints[0].addresses: no address (exactly one is expected)",
        ),
        (
            "address of the wrong family for the slice",
            json!({"endpoints": [ready("198.18.1.2", "n"), ready("2001:db8::2", "n")]}),
            "EndpointSlice default/good-bad: endpoints[1].addresses[0]: 2001:db8::2 is IPv6 but the slice's addressType is IPv4",
        ),
        (
            "slice port 0",
            json!({"ports": [{"port": 0}], "endpoints": [ready("198.18.1.2", "n")]}),
            "EndpointSlice default/good-bad: ports[0].port: 0 is not a valid port number (1-65535)",
        ),
        (
            "slice port above 65535",
            json!({"ports": [{"name": "x", "port": 8080}, {"port": 100000}], "endpoints": [ready("198.18.1.2", "n")]}),
            "EndpointSlice default/good-bad: ports[1].port: 100000 is not a valid port number (1-65535)",
        ),
        (
            "unknown slice port protocol",
            json!({"ports": [{"port": 8080, "protocol": "QUIC"}], "endpoints": [ready("198.18.1.2", "n")]}),
            "EndpointSlice default/good-bad: ports[0].protocol: unknown protocol \"QUIC\" (expected TCP, UDP or SCTP)",
        ),
        (
            "duplicate slice port",
            json!({"ports": [{"port": 8080}, {"port": 8081}], "endpoints": [ready("198.18.1.2", "n")]}),
            "EndpointSlice default/good-bad: ports[1].name: duplicate port name \"\" for protocol TCP",
        ),
        (
            "unknown address type",
            json!({"addressType": "IPv5", "endpoints": [ready("198.18.1.2", "n")]}),
            "EndpointSlice default/good-bad: addressType: unknown address type \"IPv5\" (expected IPv4, IPv6 or FQDN)",
        ),
        (
            "empty service-name label",
            json!({"metadata": {"labels": {"kubernetes.io/service-name": ""}}, "endpoints": [ready("198.18.1.2", "n")]}),
            "EndpointSlice default/good-bad: metadata.labels[kubernetes.io/service-name]: missing; the slice belongs to no service and is ignored",
        ),
    ];
    for (case, patch, want) in cases {
        let c = good_world()
            .slice(slice("good-bad", "good", patch))
            .compute(&node_v4());
        // The good service's own slice keeps providing endpoints; the bad slice adds none.
        assert_isolated(case, &c, &[want]);
    }
}

#[test]
fn invalid_legacy_endpoints_are_skipped_with_one_warning() {
    // (case, subsets of Endpoints default/legacy, the one expected warning)
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unparsable address",
            json!([{"addresses": [{"ip": "198.18.3.1"}, {"ip": "ten"}], "ports": [{"port": 8080}]}]),
            "Endpoints default/legacy: subsets[0].addresses[1].ip: \"ten\" is not a valid IP address",
        ),
        (
            "unparsable not-ready address",
            json!([{}, {"notReadyAddresses": [{"ip": ""}], "ports": [{"port": 8080}]}]),
            "Endpoints default/legacy: subsets[1].notReadyAddresses[0].ip: \"\" is not a valid IP address",
        ),
        (
            "port 0",
            json!([{"addresses": [{"ip": "198.18.3.1"}], "ports": [{"port": 0}]}]),
            "Endpoints default/legacy: subsets[0].ports[0].port: 0 is not a valid port number (1-65535)",
        ),
        (
            "unknown protocol",
            json!([{"addresses": [{"ip": "198.18.3.1"}], "ports": [{"port": 8080, "protocol": "tcp"}]}]),
            "Endpoints default/legacy: subsets[0].ports[0].protocol: unknown protocol \"tcp\" (expected TCP, UDP or SCTP)",
        ),
    ];
    for (case, subsets, want) in cases {
        let c = good_world()
            .svc(service(
                "legacy",
                json!({"spec": {"clusterIP": "198.18.128.3"}}),
            ))
            .legacy(legacy("legacy", json!({ "subsets": subsets })))
            .compute(&node_v4());
        assert_isolated(case, &c, &[want]);
        // The service itself is fine; it just has no endpoints.
        let p = &c.state.ports[&key("legacy", "", crate::Protocol::Tcp)];
        assert!(p.endpoints.is_empty(), "{case}");
    }
}

#[test]
fn malformed_service_does_not_affect_a_valid_one() {
    let c = good_world()
        .svc(service(
            "broken",
            json!({"spec": {"type": "NodePort", "clusterIP": "bogus", "ports": [{"port": 0, "nodePort": 1}]}}),
        ))
        .compute(&node_v4());
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(c.warnings[0].kind, "Service");
    assert_eq!(c.warnings[0].object.name, "broken");
    assert_eq!(c.state, good_alone().state);
    let good = only_port(&c);
    assert_eq!(addrs(&good.endpoints), vec!["198.18.1.1:8080"]);
}

#[test]
fn warnings_are_sorted_and_name_each_object() {
    let c = World::new()
        .svc(service("b", json!({"spec": {"ports": [{"port": 0}]}})))
        .svc(service("a", json!({"spec": {"type": "Nope"}})))
        .compute(&node_v4());
    let objects: Vec<String> = c.warnings.iter().map(|w| w.object.to_string()).collect();
    assert_eq!(objects, vec!["default/a", "default/b"]);
}

/// Objects with every field empty, absurd or missing must never panic.
#[test]
fn never_panics_on_odd_objects() {
    let mut objects = ClusterObjects::default();
    objects.insert_service(Service::default());
    objects.insert_slice(EndpointSlice::default());
    objects.insert_endpoints(Endpoints::default());
    let odd_services = [
        json!({"metadata": {"name": "s1"}, "spec": {}}),
        json!({"metadata": {"name": "s2"}}),
        json!({"metadata": {"name": "s3"}, "spec": {"clusterIPs": [], "clusterIP": ""}}),
        json!({"metadata": {"name": "s4"}, "spec": {"clusterIP": "198.18.0.1", "ports": [{"port": i32::MAX, "nodePort": i32::MIN}]}}),
        json!({"metadata": {"name": "s5"}, "spec": {"clusterIP": "::", "type": "LoadBalancer", "ports": [{"port": 1}],
               "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": i32::MIN}}},
               "status": {"loadBalancer": {"ingress": [{}, {"ip": ""}, {"ipMode": "Proxy"}]}}}),
        json!({"metadata": {"name": "s6"}, "spec": {"clusterIP": "198.18.0.6", "type": "LoadBalancer",
               "externalTrafficPolicy": "Local", "healthCheckNodePort": i32::MIN, "ports": [{"port": 1}]}}),
        json!({"metadata": {"name": "s7"}, "spec": {"clusterIPs": ["None", "198.18.0.7"]}}),
        json!({"metadata": {"name": "s8"}, "spec": {"clusterIPs": ["198.18.0.8", "None"], "ports": [{"port": 8}]}}),
        json!({"metadata": {"name": "s9"}, "spec": {"clusterIP": "198.18.0.9.5", "ports": [{"port": 9}]}}),
        json!({"metadata": {"name": "s10"}, "spec": {"clusterIP": "999.1.1.1", "ports": [{"port": 10}]}}),
        json!({"metadata": {"name": "s11"}, "spec": {"clusterIP": "+198.18.0.11", "ports": [{"port": 11}]}}),
    ];
    for s in odd_services {
        objects.insert_service(from_json(s));
    }
    let odd_slices = [
        json!({"metadata": {"name": "e1", "labels": {"kubernetes.io/service-name": "s1"}}, "addressType": "", "endpoints": []}),
        json!({"metadata": {"name": "e2", "labels": {"kubernetes.io/service-name": "s4"}}, "addressType": "IPv4",
               "ports": [{}, {"port": i32::MIN}], "endpoints": [{"addresses": []}]}),
        json!({"metadata": {"name": "e3", "labels": {"kubernetes.io/service-name": "s5"}}, "addressType": "IPv6",
               "ports": [{"port": 1}], "endpoints": [{"addresses": ["::1", "garbage"], "conditions": {}}]}),
        json!({"metadata": {"name": "e4", "labels": {"kubernetes.io/service-name": "s8"}}, "addressType": "IPv4",
               "ports": [{"port": 80, "protocol": ""}], "endpoints": [{"addresses": [""]}]}),
    ];
    for s in odd_slices {
        objects.insert_slice(from_json(s));
    }
    objects.insert_endpoints(from_json(
        json!({"metadata": {"name": "s9"}, "subsets": [{}, {"ports": [{"port": i32::MAX}]}]}),
    ));
    for node in [node_v4(), node_v6(), node_dual(), {
        let mut n = node_v4();
        n.ipv4 = false;
        // An empty (reversed) range must reject every nodePort without panicking.
        n.nodeport_range = std::ops::RangeInclusive::new(10, 1);
        n.name.clear();
        n
    }] {
        let c = compute_desired_state(&objects, &node);
        // Determinism: the same input gives the same output.
        assert_eq!(c, compute_desired_state(&objects, &node));
        for w in &c.warnings {
            assert!(!w.to_string().is_empty());
        }
    }
}

#[test]
fn a_service_without_a_name_is_skipped_with_a_warning() {
    let mut nameless = service("x", json!({"spec": {"clusterIP": "198.18.128.20"}}));
    nameless.metadata.name = None;
    let c = good_world().svc(nameless).compute(&node_v4());
    assert_isolated(
        "no metadata.name",
        &c,
        &["Service default/: metadata.name: missing; a Service needs a name"],
    );
    assert!(
        c.state.ports.keys().all(|k| !k.name.is_empty()),
        "nothing programmed as `default/`"
    );
}
