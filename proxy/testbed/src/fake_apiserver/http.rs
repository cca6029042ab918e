//! The HTTP side: routing, LIST, GET and WATCH, and Status replies for errors.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};

use super::selector::Selector;
use super::shared::Shared;
use super::store::{Key, SubscribeError, WatchStart};
use super::watch::{WatchOptions, WatchSession};
use super::Kind;

/// The router: one fallback handler, because the paths are parsed by hand.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// What a URL path names.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    shared.record_request(format!("{method} {uri}"));
    if !shared.store().available() {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the fake API server is unavailable (outage simulated by the test)",
        );
    }
    if let Some(response) = super::events::handle(&shared, &method, uri.path(), &body) {
        return response;
    }
    if method != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the fake API server is read-only over HTTP; {method} is not supported"),
        );
    }
    if uri.path() == "/version" {
        return json_response(StatusCode::OK, &version());
    }
    let Some(target) = parse_path(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let params = match Query::<HashMap<String, String>>::try_from_uri(&uri) {
        Ok(Query(params)) => params,
        Err(e) => return bad_request(&e.to_string()),
    };
    match &target.name {
        Some(name) => get(&shared, &target, name),
        None if flag(&params, "watch") => watch(&shared, target, &params),
        None => list(&shared, &target, &params),
    }
}

/// `/api/v1[/namespaces/NS]/PLURAL[/NAME]` or the same under `/apis/GROUP/v1`.
fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, "v1", rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(*name)),
        _ => return None,
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.group() == group && k.plural() == plural)?;
    // Nodes have no namespaced path; a namespaced object's own path needs a namespace.
    let scope_ok = !matches!(
        (kind.namespaced(), namespace, name),
        (false, Some(_), _) | (true, None, Some(_))
    );
    scope_ok.then(|| Target {
        kind,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

fn get(shared: &Shared, target: &Target, name: &str) -> Response {
    let key: Key = (
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    );
    match shared.store().objects(target.kind).get(&key) {
        Some(object) => json_response(StatusCode::OK, object),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} {name:?} not found", target.kind.plural()),
        ),
    }
}

fn list(shared: &Shared, target: &Target, params: &HashMap<String, String>) -> Response {
    let selector = match selector(target, params) {
        Ok(s) => s,
        Err(message) => return bad_request(&message),
    };
    // At resourceVersion 0 the real API server lists from its watch cache, which ignores
    // `limit`: one page with everything.
    let from_cache = params.get("resourceVersion").is_some_and(|rv| rv == "0");
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        _ if from_cache => None,
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return bad_request("limit must be a non-negative integer"),
    };
    let resume = match params.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => match parse_continue(token) {
            Some(resume) => Some(resume),
            None => return bad_request(&format!("invalid continue token {token:?}")),
        },
    };

    let store = shared.store();
    // A continued list reports the first page's resourceVersion. Later pages show the
    // objects as they are now, not a snapshot; replaying the watch from that version
    // repairs any difference, so the client still converges.
    let (list_rv, start) = match resume {
        Some((rv, _)) if !store.continuable(rv) => {
            return status(
                StatusCode::GONE,
                "Expired",
                "The provided continue parameter is too old to display a consistent list \
                 result. You can start a new list without the continue parameter.",
            )
        }
        Some((rv, key)) => (rv, Bound::Excluded(key)),
        None => (store.resource_version(), Bound::Unbounded),
    };
    let mut items = Vec::new();
    let mut last_key = None;
    let mut remaining = 0u64;
    for (key, object) in store
        .objects(target.kind)
        .range((start, Bound::Unbounded))
        .filter(|(_, o)| selector.matches(o))
    {
        if limit.is_some_and(|n| items.len() >= n) {
            remaining += 1;
        } else {
            items.push(list_item(object));
            last_key = Some(key);
        }
    }
    let mut metadata = json!({ "resourceVersion": list_rv.to_string() });
    if let (true, Some((ns, name))) = (remaining > 0, last_key) {
        metadata["continue"] = format!("{list_rv}:{ns}/{name}").into();
        metadata["remainingItemCount"] = remaining.into();
    }
    drop(store);
    shared.count_list(target.kind);
    json_response(
        StatusCode::OK,
        &json!({
            "kind": target.kind.list_name(),
            "apiVersion": target.kind.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

/// A list item: the API server leaves kind and apiVersion out of list items.
fn list_item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Some(map) = item.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    item
}

/// Continue tokens are `RV:NAMESPACE/NAME` of the last item sent; names never contain
/// `:` or `/`.
fn parse_continue(token: &str) -> Option<(u64, Key)> {
    let (rv, key) = token.split_once(':')?;
    let (ns, name) = key.split_once('/')?;
    Some((rv.parse().ok()?, (ns.to_owned(), name.to_owned())))
}

fn watch(shared: &Arc<Shared>, target: Target, params: &HashMap<String, String>) -> Response {
    let selector = match selector(&target, params) {
        Ok(s) => s,
        Err(message) => return bad_request(&message),
    };
    let deadline = match params.get("timeoutSeconds").map(|t| t.parse::<u64>()) {
        None | Some(Ok(0)) => None,
        Some(Ok(secs)) => Some(tokio::time::Instant::now() + Duration::from_secs(secs)),
        Some(Err(_)) => return bad_request("timeoutSeconds must be a non-negative integer"),
    };
    let start = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => WatchStart::Current,
        Some(rv) => match rv.parse() {
            Ok(rv) => WatchStart::After(rv),
            Err(_) => return bad_request(&format!("invalid resource version {rv:?}")),
        },
    };
    let options = WatchOptions {
        bookmarks: flag(params, "allowWatchBookmarks"),
        send_initial_events: flag(params, "sendInitialEvents"),
        deadline,
    };
    let subscribed = shared.store().subscribe(target.kind, start);
    let session = match subscribed {
        Ok(sub) => WatchSession::open(shared.clone(), target.kind, selector, options, sub),
        Err(SubscribeError::Expired { requested, oldest }) => {
            WatchSession::expired(shared.clone(), target.kind, requested, oldest)
        }
        Err(SubscribeError::Unavailable) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the fake API server is unavailable (outage simulated by the test)",
            )
        }
    };
    shared.count_watch(target.kind);
    response(StatusCode::OK, Body::from_stream(session.into_stream()))
}

fn selector(target: &Target, params: &HashMap<String, String>) -> Result<Selector, String> {
    Selector::parse(
        target.namespace.as_deref(),
        params.get("labelSelector").map(String::as_str),
        params.get("fieldSelector").map(String::as_str),
    )
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    matches!(params.get(name).map(String::as_str), Some("true" | "1"))
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-switchyard-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn bad_request(message: &str) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// A `Status` object, the body of every API server error reply.
pub(crate) fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    json_response(code, &body)
}

pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response {
    response(code, Body::from(body.to_string()))
}

fn response(code: StatusCode, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = |p: &str| parse_path(p).map(|t| (t.kind, t.namespace, t.name));
        assert_eq!(t("/api/v1/services"), Some((Kind::Service, None, None)));
        assert_eq!(
            t("/api/v1/namespaces/kube-system/services"),
            Some((Kind::Service, Some("kube-system".into()), None))
        );
        assert_eq!(
            t("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/x"),
            Some((
                Kind::EndpointSlice,
                Some("default".into()),
                Some("x".into())
            ))
        );
        assert_eq!(
            t("/api/v1/nodes/node1"),
            Some((Kind::Node, None, Some("node1".into())))
        );
        assert_eq!(t("/api/v1/namespaces/default/nodes"), None);
        assert_eq!(t("/api/v1/services/x"), None);
        assert_eq!(t("/api/v1/namespaces/default"), None);
        assert_eq!(t("/apis/discovery.k8s.io/v1/services"), None);
    }

    #[test]
    fn continue_tokens() {
        assert_eq!(
            parse_continue("12:default/web"),
            Some((12, ("default".into(), "web".into())))
        );
        assert_eq!(parse_continue(":node1"), None);
    }
}
