//! RBAC's view of the fake API server's request log, shared by the API source tests.

/// The fake API server's request log (`METHOD PATH?QUERY`) as RBAC's (group, resource,
/// verb) triples; non-resource requests (`/version`) are left out, anything else the log
/// holds that is not a resource request fails the test.
pub fn triples(requests: &[String]) -> std::collections::BTreeSet<(String, String, String)> {
    let mut triples = std::collections::BTreeSet::new();
    for request in requests {
        let (method, target) = request.split_once(' ').expect("METHOD TARGET");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path == "/version" {
            continue;
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", "v1", rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => panic!("not a resource request: {request}"),
        };
        let rest = match rest {
            ["namespaces", _, rest @ ..] if !rest.is_empty() => rest,
            rest => rest,
        };
        let watch = query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
        let (resource, verb) = match (method, rest) {
            ("GET", [resource]) if watch => (*resource, "watch"),
            ("GET", [resource]) => (*resource, "list"),
            ("GET", [resource, _]) => (*resource, "get"),
            ("POST", [resource]) => (*resource, "create"),
            ("PATCH", [resource, _]) => (*resource, "patch"),
            ("PUT", [resource, _]) => (*resource, "update"),
            ("DELETE", [resource, ..]) => (*resource, "delete"),
            _ => panic!("unexpected request: {request}"),
        };
        triples.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
    }
    triples
}
