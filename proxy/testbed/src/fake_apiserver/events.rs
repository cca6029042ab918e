//! events.k8s.io/v1 Events: create (POST) and JSON merge patch (PATCH), kept in memory for
//! the test to read; no list or watch (nothing Switchyard does needs them).

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::http::{json_response, status};
use super::shared::Shared;

/// Handles `method path` if it addresses Events; `None` for every other request.
pub(crate) fn handle(
    shared: &Shared,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<Response> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (namespace, name) = match segments.as_slice() {
        ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"] => (*ns, None),
        ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", name] => (*ns, Some(*name)),
        _ => return None,
    };
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    Some(match (method, name) {
        (&Method::POST, None) => match parsed {
            Ok(mut event) => {
                let Some(name) = event["metadata"]["name"].as_str().map(str::to_owned) else {
                    return Some(status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value"));
                };
                let mut events = shared.events();
                let key = (namespace.to_owned(), name.clone());
                if events.contains_key(&key) {
                    return Some(status(StatusCode::CONFLICT, "AlreadyExists", &format!("events {name:?} already exists")));
                }
                event["metadata"]["namespace"] = Value::String(namespace.to_owned());
                event["metadata"]["uid"] = Value::String(format!("event-{}", events.len() + 1));
                event["metadata"]["resourceVersion"] = Value::String((events.len() + 1).to_string());
                events.insert(key, event.clone());
                json_response(StatusCode::CREATED, &event)
            }
            Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        },
        (&Method::PATCH, Some(name)) => match parsed {
            Ok(patch) => {
                let mut events = shared.events();
                match events.get_mut(&(namespace.to_owned(), name.to_owned())) {
                    Some(event) => {
                        merge(event, &patch);
                        json_response(StatusCode::OK, event)
                    }
                    None => status(StatusCode::NOT_FOUND, "NotFound", &format!("events {name:?} not found")),
                }
            }
            Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        },
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the fake API server takes only create and patch of events; {method} is not supported"),
        ),
    })
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn merge_patch() {
        let mut target = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}});
        super::merge(
            &mut target,
            &serde_json::json!({"b": {"c": null, "e": 4}, "f": [1]}),
        );
        assert_eq!(
            target,
            serde_json::json!({"a": 1, "b": {"d": 3, "e": 4}, "f": [1]})
        );
    }
}
