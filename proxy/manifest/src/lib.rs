//! Parsing of multi-document YAML manifests into the objects the model understands.
//!
//! Pure text -> objects (no I/O), in its own crate so the fuzz targets (`proxy/fuzz/`) build
//! it without the controller's runtime; the `switchyard` crate re-exports it as
//! `source::manifest_parse`.
use std::borrow::Cow;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

mod yaml_depth;

pub use yaml_depth::{check_depth, TooDeep, MAX_DEPTH};

/// Manifest files (and texts given to [`parse_manifest`]) larger than this are rejected: a
/// symlink to a huge or endless file must not take the process's memory.
pub const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// One object read from a manifest, shared (not copied) by every snapshot holding it.
#[derive(Clone, Debug, PartialEq)]
pub enum ManifestObject {
    /// core/v1 Service.
    Service(Arc<Service>),
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(Arc<EndpointSlice>),
    /// core/v1 Endpoints (selector-less services).
    Endpoints(Arc<Endpoints>),
    /// core/v1 Node.
    Node(Arc<Node>),
}

/// What one file yielded: its objects and per-document problems.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedFile {
    /// Objects in document order.
    pub objects: Vec<ManifestObject>,
    /// Documents that were skipped, each naming the document and what was wrong.
    pub warnings: Vec<String>,
}

/// The file as a whole cannot be used; the caller keeps the file's previous contents.
/// File names in these messages are escaped (see [`escape_controls`]).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not valid YAML at all.
    #[error("{file}: YAML syntax error: {message}")]
    Syntax {
        /// File name for the message.
        file: String,
        /// Parser message with its location.
        message: String,
    },
    /// Nested deeper than [`MAX_DEPTH`]; rejected before parsing, which would take time
    /// quadratic in the depth.
    #[error("{file}: YAML nested deeper than {limit} levels (line {line})")]
    TooDeep {
        /// File name for the message.
        file: String,
        /// The limit.
        limit: usize,
        /// 1-based line where the limit is crossed.
        line: usize,
    },
    /// Longer than [`MAX_FILE_SIZE`].
    #[error("{file}: larger than the {limit}-byte limit ({size} bytes)")]
    TooLarge {
        /// File name for the message.
        file: String,
        /// The limit.
        limit: u64,
        /// The text's size.
        size: u64,
    },
}

/// Parses every document of a file. Lists (`kind: List`, `*List`) are flattened.
pub fn parse_manifest(file: &str, text: &str) -> Result<ParsedFile, ParseError> {
    let file = escape_controls(file).into_owned();
    let size = u64::try_from(text.len()).unwrap_or(u64::MAX);
    if size > MAX_FILE_SIZE {
        return Err(ParseError::TooLarge {
            file,
            limit: MAX_FILE_SIZE,
            size,
        });
    }
    if let Err(deep) = check_depth(text, MAX_DEPTH) {
        return Err(ParseError::TooDeep {
            file,
            limit: MAX_DEPTH,
            line: deep.line,
        });
    }
    let mut parsed = ParsedFile::default();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_norway::Value::deserialize(document).map_err(|e| ParseError::Syntax {
            file: file.clone(),
            message: escape_controls(&e.to_string()).into_owned(),
        })?;
        collect(&file, index, value, &mut parsed);
    }
    Ok(parsed)
}

/// `s` with control characters (newlines, escape sequences, bidi overrides) written as Rust
/// escapes, so that a name taken from a manifest cannot forge or garble a log line.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_char(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

fn collect(file: &str, index: usize, value: serde_norway::Value, out: &mut ParsedFile) {
    if value.is_null() {
        return; // empty document, e.g. a trailing `---`
    }
    let kind = field(&value, "kind").unwrap_or_default().to_owned();
    let api_version = field(&value, "apiVersion").unwrap_or_default().to_owned();
    let metadata = value.get("metadata");
    let name = metadata.and_then(|m| field(m, "name"));
    let namespace = metadata.and_then(|m| field(m, "namespace"));
    let place = format!(
        "{file} document {index} ({} {})",
        escape_controls(&kind),
        escape_controls(name.unwrap_or("<unnamed>"))
    );
    // The API server would reject such names (they must be DNS labels); here they would
    // reach every log line that names the object.
    for (what, text) in [("name", name), ("namespace", namespace)] {
        if text.is_some_and(|t| t.chars().any(is_unsafe_char)) && !is_list(&kind) {
            out.warnings.push(format!(
                "{place}: metadata.{what}: contains control characters; skipping the document"
            ));
            return;
        }
    }
    let result = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => from_value(value).map(ManifestObject::Service),
        ("v1", "Endpoints") => from_value(value).map(ManifestObject::Endpoints),
        ("v1", "Node") => from_value(value).map(ManifestObject::Node),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            from_value(value).map(ManifestObject::EndpointSlice)
        }
        (_, k) if is_list(k) => {
            match value.get("items").and_then(|i| i.as_sequence()) {
                Some(items) => {
                    for item in items.clone() {
                        collect(file, index, item, out);
                    }
                }
                None => out.warnings.push(format!("{place}: items: missing list")),
            }
            return;
        }
        _ => return, // other kinds (Deployments, ConfigMaps...) are not ours to read
    };
    match result {
        Ok(object) => out.objects.push(object),
        Err(e) => out
            .warnings
            .push(format!("{place}: {}", escape_controls(&e))),
    }
}

fn field<'v>(value: &'v serde_norway::Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(|k| k.as_str())
}

fn is_list(kind: &str) -> bool {
    kind == "List" || kind.ends_with("List")
}

/// The object, or what is wrong with it prefixed by the field's path (`spec.ports[0].port:
/// invalid value: integer `2147483648`, expected i32`).
fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_norway::Value,
) -> Result<Arc<T>, String> {
    serde_path_to_error::deserialize(value)
        .map(Arc::new)
        .map_err(|e| match e.path().to_string() {
            path if path == "." => e.into_inner().to_string(),
            path => format!("{path}: {}", e.into_inner()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_supported_kind_and_skips_others() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.18.128.10, ports: [{port: 80, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [198.19.1.10]}]
ports: [{port: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: legacy}
subsets: []
---
apiVersion: v1
kind: Node
metadata: {name: node1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
"#;
        let parsed = parse_manifest("a.yaml", text).expect("valid yaml");
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        let kinds: Vec<&str> = parsed
            .objects
            .iter()
            .map(|o| match o {
                ManifestObject::Service(_) => "Service",
                ManifestObject::EndpointSlice(_) => "EndpointSlice",
                ManifestObject::Endpoints(_) => "Endpoints",
                ManifestObject::Node(_) => "Node",
            })
            .collect();
        assert_eq!(kinds, ["Service", "EndpointSlice", "Endpoints", "Node"]);
    }

    #[test]
    fn a_bad_document_is_named_and_the_rest_still_load() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec: {ports: 5}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: fine}\n";
        let parsed = parse_manifest("b.yaml", text).expect("valid yaml");
        assert_eq!(parsed.objects.len(), 1);
        assert_eq!(parsed.warnings.len(), 1);
        assert!(
            parsed.warnings[0].starts_with("b.yaml document 0 (Service broken)"),
            "{}",
            parsed.warnings[0]
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: big}\n\
                    spec: {ports: [{port: 80}, {port: 2147483648}]}\n";
        let parsed = parse_manifest("f.yaml", text).expect("valid yaml");
        assert_eq!(
            parsed.warnings,
            [
                "f.yaml document 0 (Service big): spec.ports[1].port: invalid value: integer \
              `2147483648`, expected i32"
            ]
        );
    }

    #[test]
    fn lists_are_flattened() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: n1}\n\
                    - apiVersion: v1\n  kind: Node\n  metadata: {name: n2}\n";
        assert_eq!(parse_manifest("c.yaml", text).unwrap().objects.len(), 2);
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = parse_manifest("d.yaml", "kind: Service\n  bad: [indent\n").unwrap_err();
        assert!(matches!(err, ParseError::Syntax { .. }));
        assert!(
            err.to_string().starts_with("d.yaml: YAML syntax error"),
            "{err}"
        );
    }

    #[test]
    fn nesting_100k_levels_deep_is_an_error_naming_the_file() {
        let text = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let err = parse_manifest("deep.yaml", &text).unwrap_err();
        assert!(matches!(err, ParseError::TooDeep { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("deep.yaml: YAML nested deeper than 64 levels"),
            "{err}"
        );
        let err = parse_manifest("deep.yaml", &"- ".repeat(100_000)).unwrap_err();
        assert!(err.to_string().starts_with("deep.yaml: "), "{err}");
    }

    #[test]
    fn control_characters_in_names_are_escaped_and_such_objects_skipped() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: \"evil\\nWARN forged\\u001b[2J\"}\n\
                    spec: {ports: [{port: 80}]}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: \"bad\\rport\"}\nspec: {ports: 5}\n";
        let parsed = parse_manifest("e\nvil.yaml", text).expect("valid yaml");
        assert!(parsed.objects.is_empty());
        assert_eq!(parsed.warnings.len(), 2, "{:?}", parsed.warnings);
        for warning in &parsed.warnings {
            assert!(!warning.chars().any(char::is_control), "{warning:?}");
        }
        assert!(
            parsed.warnings[0].starts_with(
                "e\\nvil.yaml document 0 (Service evil\\nWARN forged\\u{1b}[2J): metadata.name"
            ),
            "{}",
            parsed.warnings[0]
        );
        assert!(
            parsed.warnings[1].contains("bad\\rport"),
            "{}",
            parsed.warnings[1]
        );
    }
}
