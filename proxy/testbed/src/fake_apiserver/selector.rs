//! Label and field selectors, as the API server reads them from `labelSelector` and
//! `fieldSelector`, plus the namespace implied by a namespaced URL path.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    /// `key=value` or `key==value`.
    Eq(String, String),
    /// `key!=value`; like the API server, also true when the label is absent.
    NotEq(String, String),
    /// `key`.
    Exists(String),
    /// `!key`.
    NotExists(String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`; also true when the label is absent.
    NotIn(String, Vec<String>),
}

/// The object fields a field selector may name (the ones every kind supports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
}

/// One requirement of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldReq {
    field: Field,
    equal: bool,
    value: String,
}

/// Everything a list or watch request filters on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Selector {
    /// Builds a selector from the request's parameters; the error is the message of a
    /// 400 reply.
    pub(crate) fn parse(
        namespace: Option<&str>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, String> {
        Ok(Selector {
            namespace: namespace.map(str::to_owned),
            labels: label_selector
                .map(parse_labels)
                .transpose()?
                .unwrap_or_default(),
            fields: field_selector
                .map(parse_fields)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// Whether `object` is selected.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let meta = object.get("metadata");
        let text = |key: &str| meta.and_then(|m| m.get(key)).and_then(Value::as_str);
        let name = text("name").unwrap_or_default();
        let namespace = text("namespace").unwrap_or_default();
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        let fields_ok = self.fields.iter().all(|req| {
            let actual = match req.field {
                Field::Name => name,
                Field::Namespace => namespace,
            };
            (actual == req.value) == req.equal
        });
        let labels = meta.and_then(|m| m.get("labels"));
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        fields_ok && self.labels.iter().all(|req| label_matches(req, label))
    }
}

fn label_matches<'a>(req: &LabelReq, label: impl Fn(&str) -> Option<&'a str>) -> bool {
    match req {
        LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
        LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
        LabelReq::Exists(k) => label(k).is_some(),
        LabelReq::NotExists(k) => label(k).is_none(),
        LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
    }
}

/// Splits on commas outside parentheses (set-based values contain commas).
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_labels(text: &str) -> Result<Vec<LabelReq>, String> {
    split_terms(text).into_iter().map(parse_label).collect()
}

fn parse_label(term: &str) -> Result<LabelReq, String> {
    let bad = || format!("unable to parse requirement: {term:?}");
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(key.trim().to_owned()));
    }
    if let (Some(open), true) = (term.find('('), term.ends_with(')')) {
        let mut head = term[..open].split_whitespace();
        let (Some(key), Some(op), None) = (head.next(), head.next(), head.next()) else {
            return Err(bad());
        };
        let values = term[open + 1..term.len() - 1]
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect();
        return match op {
            "in" => Ok(LabelReq::In(key.to_owned(), values)),
            "notin" => Ok(LabelReq::NotIn(key.to_owned(), values)),
            _ => Err(bad()),
        };
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelReq::NotEq(k.trim().to_owned(), v.trim().to_owned()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned()));
    }
    if term.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(LabelReq::Exists(term.to_owned()))
}

fn parse_fields(text: &str) -> Result<Vec<FieldReq>, String> {
    split_terms(text)
        .into_iter()
        .map(|term| {
            let (key, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector: {term:?}"));
            };
            // Like the API server: only fields the kind registers are selectable, and
            // metadata.name / metadata.namespace are the ones every kind has.
            let field = match key.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                other => return Err(format!("field label not supported: {other}")),
            };
            Ok(FieldReq {
                field,
                equal,
                value: value.trim().to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "labels": labels}})
    }

    #[test]
    fn label_requirements() {
        let o = obj("a", json!({"app": "web", "tier": "front"}));
        let sel = |s: &str| Selector::parse(None, Some(s), None).map(|sel| sel.matches(&o));
        assert_eq!(sel("app=web"), Ok(true));
        assert_eq!(sel("app==web,tier=front"), Ok(true));
        assert_eq!(sel("app!=web"), Ok(false));
        assert_eq!(sel("missing!=x"), Ok(true));
        assert_eq!(sel("!service.kubernetes.io/headless,app"), Ok(true));
        assert_eq!(sel("!app"), Ok(false));
        assert_eq!(sel("tier in (back, front)"), Ok(true));
        assert_eq!(sel("tier notin (back,front)"), Ok(false));
        assert_eq!(sel("missing notin (x)"), Ok(true));
        assert!(sel("app web").is_err());
    }

    #[test]
    fn field_requirements() {
        let o = obj("node1", json!({}));
        let sel = |s: &str| Selector::parse(None, None, Some(s)).map(|sel| sel.matches(&o));
        assert_eq!(sel("metadata.name=node1"), Ok(true));
        assert_eq!(sel("metadata.name=node2"), Ok(false));
        assert_eq!(
            sel("metadata.name!=node2,metadata.namespace=default"),
            Ok(true)
        );
        assert!(sel("spec.unschedulable=true").is_err());
        let ns = Selector::parse(Some("kube-system"), None, None).map(|s| s.matches(&o));
        assert_eq!(ns, Ok(false));
    }
}
