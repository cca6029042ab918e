//! The synthetic cluster the control-plane benchmark loads: N ClusterIP TCP services with
//! E ready endpoints each, in one EndpointSlice per service, as manifest files.
//!
//! Addresses stay inside the benchmarking range 198.18.0.0/15: ClusterIPs come from
//! 198.18.128.0/17 and endpoints from 198.19.2.0-198.19.252.255. The endpoints need not
//! exist: nothing connects to them, only the control plane is measured.
use std::net::Ipv4Addr;

use anyhow::bail;

/// Services per manifest file. A few large files rather than one per service, like a
/// `kubectl get -o yaml` dump; the source re-reads all of them on any change anyway.
const SERVICES_PER_FILE: usize = 1000;

/// Namespace of every generated object.
const NAMESPACE: &str = "bench";

/// File holding the EndpointSlice of service 0, the one the change rounds rewrite. It is
/// apart from the others so that a change writes one small file.
pub const CHANGING_SLICE_FILE: &str = "changing-slice.yaml";

/// Most services that fit: one ClusterIP each from 198.18.128.1 up to 198.18.255.254.
pub const MAX_SERVICES: usize = (1 << 15) - 2;

/// Most endpoints per service; more would not be a realistic single EndpointSlice (the API
/// server's default limit is 100 per slice).
pub const MAX_ENDPOINTS: usize = 100;

/// Distinct addresses of the normal endpoint plan: third octet 2..=251, fourth 10..=249.
/// Node 1 (the measured node) owns 198.19.1.0/24, so no endpoint is local to it.
const ENDPOINT_THIRD_OCTETS: usize = 250;
const ENDPOINT_FOURTH_OCTETS: usize = 240;

/// Third octet of the addresses the change rounds swap in; the normal plan never uses it,
/// so every round really changes the slice.
const CHANGED_THIRD_OCTET: u8 = 252;

/// ClusterIP of service `i` (0-based).
pub fn service_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + 1 + i as u32)
}

/// Address of endpoint `j` of service `i`. The plan has 60,000 distinct addresses and
/// wraps after that: endpoints of different services may share one, which the proxy does
/// not care about.
fn endpoint_ip(i: usize, j: usize, per_service: usize) -> Ipv4Addr {
    let k = i * per_service + j;
    let third = 2 + (k / ENDPOINT_FOURTH_OCTETS) % ENDPOINT_THIRD_OCTETS;
    let fourth = 10 + k % ENDPOINT_FOURTH_OCTETS;
    Ipv4Addr::new(198, 19, third as u8, fourth as u8)
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

pub fn service_yaml(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec: {{type: ClusterIP, clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]}}\n",
        name = service_name(i),
        ip = service_ip(i),
    )
}

/// The EndpointSlice of service `i`; `variant` > 0 replaces its first endpoint with a
/// different address per variant (the one-service change).
pub fn slice_yaml(i: usize, endpoints: usize, variant: usize) -> String {
    let name = service_name(i);
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: {NAMESPACE}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
    );
    for j in 0..endpoints {
        let ip = if j == 0 && variant > 0 {
            Ipv4Addr::new(198, 19, CHANGED_THIRD_OCTET, 10 + (variant % 240) as u8)
        } else {
            endpoint_ip(i, j, endpoints)
        };
        let [_, _, third, _] = ip.octets();
        yaml.push_str(&format!(
            "- {{addresses: [{ip}], nodeName: node{third}, conditions: {{ready: true, serving: true, terminating: false}}}}\n"
        ));
    }
    yaml
}

/// One manifest file with services `range` and their slices, except service 0's slice
/// (it lives in [`CHANGING_SLICE_FILE`]).
fn services_file(range: std::ops::Range<usize>, endpoints: usize) -> String {
    let mut docs = Vec::with_capacity(2 * range.len());
    for i in range {
        docs.push(service_yaml(i));
        if i != 0 {
            docs.push(slice_yaml(i, endpoints, 0));
        }
    }
    docs.join("---\n")
}

/// The whole cluster as (file name, YAML) pairs; the last one is [`CHANGING_SLICE_FILE`].
pub fn files(services: usize, endpoints: usize) -> anyhow::Result<Vec<(String, String)>> {
    if services == 0 || services > MAX_SERVICES {
        bail!("--services must be in 1..={MAX_SERVICES} (ClusterIPs come from 198.18.128.0/17), got {services}");
    }
    if endpoints == 0 || endpoints > MAX_ENDPOINTS {
        bail!("--endpoints must be in 1..={MAX_ENDPOINTS}, got {endpoints}");
    }
    let mut files: Vec<(String, String)> = (0..services)
        .step_by(SERVICES_PER_FILE)
        .enumerate()
        .map(|(file, start)| {
            let range = start..(start + SERVICES_PER_FILE).min(services);
            (
                format!("services-{file:02}.yaml"),
                services_file(range, endpoints),
            )
        })
        .collect();
    files.push((CHANGING_SLICE_FILE.to_owned(), slice_yaml(0, endpoints, 0)));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn docs(yaml: &str) -> Vec<serde_norway::Value> {
        serde_norway::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn service_ips_are_unique_and_inside_the_benchmark_service_range() {
        let range = Ipv4Addr::new(198, 18, 128, 0);
        let ips: BTreeSet<Ipv4Addr> = (0..MAX_SERVICES).map(service_ip).collect();
        assert_eq!(ips.len(), MAX_SERVICES);
        for ip in [ips.first().unwrap(), ips.last().unwrap()] {
            assert_eq!(u32::from(*ip) >> 15, u32::from(range) >> 15, "{ip}");
            assert_ne!(ip.octets()[3], 0, "{ip}");
        }
        assert_eq!(*ips.last().unwrap(), Ipv4Addr::new(198, 18, 255, 254));
    }

    #[test]
    fn endpoints_are_remote_pods_and_distinct_within_a_service() {
        for i in [0, 1, 5999, 9999] {
            let ips: BTreeSet<Ipv4Addr> = (0..10).map(|j| endpoint_ip(i, j, 10)).collect();
            assert_eq!(ips.len(), 10);
            for ip in ips {
                let [a, b, c, _] = ip.octets();
                assert_eq!((a, b), (198, 19), "{ip}");
                assert!((2..=251).contains(&c), "{ip} must not be on node1");
            }
        }
    }

    #[test]
    fn a_file_holds_each_service_and_its_slice_but_service_0_has_its_slice_apart() {
        let all = docs(&services_file(0..3, 10));
        let kinds: Vec<&str> = all.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Service",
                "Service",
                "EndpointSlice",
                "Service",
                "EndpointSlice"
            ]
        );
        let slice = &all[2];
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "svc-00001"
        );
        assert_eq!(slice["endpoints"].as_sequence().unwrap().len(), 10);
        assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
        assert_eq!(all[0]["spec"]["clusterIP"], "198.18.128.1");
    }

    #[test]
    fn each_variant_changes_only_the_first_endpoint() {
        let base = docs(&slice_yaml(0, 10, 0)).remove(0);
        let v1 = docs(&slice_yaml(0, 10, 1)).remove(0);
        let v2 = docs(&slice_yaml(0, 10, 2)).remove(0);
        let first = |d: &serde_norway::Value| d["endpoints"][0]["addresses"][0].clone();
        assert_ne!(first(&base), first(&v1));
        assert_ne!(first(&v1), first(&v2));
        assert_eq!(base["endpoints"][1], v1["endpoints"][1]);
    }
}
