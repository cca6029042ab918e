//! What the API source asks the API server for, as RBAC names it: the one list the ClusterRole
//! in `deploy/base/rbac.yaml` must equal (a unit test compares the two both ways, and
//! `proxy/tests/api_source.rs` checks the requests the running binary makes against it).
//! Whoever adds an API call adds it here, and the test then asks for the RBAC rule.

/// One resource and the verbs used on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccess {
    /// API group; empty for core.
    pub group: &'static str,
    /// Resource (plural, as in URLs and RBAC rules).
    pub resource: &'static str,
    /// RBAC verbs.
    pub verbs: &'static [&'static str],
}

/// Every resource request Switchyard makes ([`super::kube_api`]: one watcher per resource,
/// which lists, then watches; the Node through a field selector, still a list;
/// [`crate::events`]: Events). The
/// non-resource `GET /version` (probed while the API server is unreachable) is open to
/// every authenticated client and needs no rule.
pub const API_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
    },
    ApiAccess {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
    },
    ApiAccess {
        group: "",
        resource: "nodes",
        verbs: &["list", "watch"],
    },
    // crate::events: kube-rs' Recorder creates an event, and patches it into a series when it
    // repeats.
    ApiAccess {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
];

/// [`API_ACCESS`] as (group, resource, verb) triples.
pub fn triples() -> std::collections::BTreeSet<(String, String, String)> {
    API_ACCESS
        .iter()
        .flat_map(|a| {
            a.verbs
                .iter()
                .map(|v| (a.group.to_owned(), a.resource.to_owned(), (*v).to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::api::rbac::v1::ClusterRole;

    /// The ClusterRole of `deploy/base/rbac.yaml` as (group, resource, verb) triples; a
    /// wildcard is kept as `*`, so it can never equal the code's list.
    fn granted() -> BTreeSet<(String, String, String)> {
        let text = include_str!("../../../deploy/base/rbac.yaml");
        let mut roles = Vec::new();
        for document in serde_norway::Deserializer::from_str(text) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(document).expect("rbac.yaml is YAML");
            if value["kind"] == "ClusterRole" {
                roles.push(serde_json::from_value::<ClusterRole>(value).expect("a ClusterRole"));
            }
        }
        assert_eq!(roles.len(), 1, "rbac.yaml holds one ClusterRole");
        let mut granted = BTreeSet::new();
        for rule in roles[0].rules.iter().flatten() {
            assert!(
                rule.non_resource_urls.is_none() && rule.resource_names.is_none(),
                "no non-resource or per-name rules: {rule:?}"
            );
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        granted.insert((group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
        granted
    }

    #[test]
    fn the_cluster_role_grants_exactly_what_the_code_calls() {
        let granted = granted();
        let used = super::triples();
        let extra: Vec<_> = granted.difference(&used).collect();
        let missing: Vec<_> = used.difference(&granted).collect();
        assert!(
            extra.is_empty(),
            "deploy/base/rbac.yaml grants what the code never calls: {extra:?}"
        );
        assert!(
            missing.is_empty(),
            "the code calls what deploy/base/rbac.yaml does not grant: {missing:?}"
        );
    }
}
