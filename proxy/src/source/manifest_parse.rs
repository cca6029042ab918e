//! Parsing of multi-document YAML manifests into the objects the model understands.
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

/// One object read from a manifest.
#[derive(Clone, Debug)]
pub enum ManifestObject {
    /// core/v1 Service.
    Service(Box<Service>),
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// core/v1 Endpoints (selector-less services).
    Endpoints(Box<Endpoints>),
    /// core/v1 Node.
    Node(Box<Node>),
}

/// What one file yielded: its objects and per-document problems.
#[derive(Clone, Debug, Default)]
pub struct ParsedFile {
    /// Objects in document order.
    pub objects: Vec<ManifestObject>,
    /// Documents that were skipped, each naming the document and what was wrong.
    pub warnings: Vec<String>,
}

/// The file is not valid YAML at all; the caller keeps the file's previous contents.
#[derive(Debug, thiserror::Error)]
#[error("{file}: YAML syntax error: {message}")]
pub struct SyntaxError {
    /// File name for the message.
    pub file: String,
    /// Parser message with its location.
    pub message: String,
}

/// Parses every document of a file. Lists (`kind: List`, `*List`) are flattened.
pub fn parse_manifest(file: &str, text: &str) -> Result<ParsedFile, SyntaxError> {
    let mut parsed = ParsedFile::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| SyntaxError {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        collect(file, index, value, &mut parsed);
    }
    Ok(parsed)
}

fn collect(file: &str, index: usize, value: serde_yaml::Value, out: &mut ParsedFile) {
    if value.is_null() {
        return; // empty document, e.g. a trailing `---`
    }
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("<unnamed>")
        .to_owned();
    let place = format!("{file} document {index} ({kind} {name})");
    let result = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => from_value(value).map(ManifestObject::Service),
        ("v1", "Endpoints") => from_value(value).map(ManifestObject::Endpoints),
        ("v1", "Node") => from_value(value).map(ManifestObject::Node),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            from_value(value).map(ManifestObject::EndpointSlice)
        }
        (_, k) if k == "List" || k.ends_with("List") => {
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
        Err(e) => out.warnings.push(format!("{place}: {e}")),
    }
}

fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
) -> Result<Box<T>, serde_yaml::Error> {
    serde_yaml::from_value(value).map(Box::new)
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
    fn lists_are_flattened() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: n1}\n\
                    - apiVersion: v1\n  kind: Node\n  metadata: {name: n2}\n";
        assert_eq!(parse_manifest("c.yaml", text).unwrap().objects.len(), 2);
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = parse_manifest("d.yaml", "kind: Service\n  bad: [indent\n").unwrap_err();
        assert!(
            err.to_string().starts_with("d.yaml: YAML syntax error"),
            "{err}"
        );
    }
}
