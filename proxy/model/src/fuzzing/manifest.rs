//! The `manifest` target: bytes -> the manifest parser, whose promises are checked, -> the
//! objects it yields through the [`Pipeline`](super::Pipeline) for each node family.
use switchyard_manifest::{check_depth, parse_manifest, ManifestObject, ParseError, MAX_DEPTH};

use super::StepReport;
use crate::ClusterObjects;

/// The file name the parser is given: with a newline, which every message must escape.
pub const FILE: &str = "fuzz\n.yaml";
/// How [`FILE`] reads in messages.
const FILE_SHOWN: &str = "fuzz\\n.yaml";

/// What a manifest input came to.
#[derive(Debug)]
pub enum ManifestReport {
    /// Not UTF-8 (the source refuses such a file before parsing).
    NotText,
    /// The parser refused the whole file, with this message.
    Refused(String),
    /// Parsed: the parser's warnings and, per node family, the pipeline's steps.
    Parsed {
        /// The parser's per-document warnings.
        warnings: Vec<String>,
        /// Objects read.
        objects: usize,
        /// The pipeline's reports, three steps per node family.
        steps: Vec<StepReport>,
    },
}

/// Parses `data` as a manifest file and checks:
/// - the depth pre-scan and the parser agree (a file the pre-scan refuses is refused as too
///   deep, naming a line);
/// - every message (error or warning) names the file, with control characters escaped, and
///   a warning also names the document;
/// - no object comes out whose name or namespace holds a control character;
/// - the objects go through the model pipeline ([`super::objects`]) for each node family.
pub fn manifest(data: &[u8]) -> ManifestReport {
    let Ok(text) = std::str::from_utf8(data) else {
        return ManifestReport::NotText;
    };
    let too_deep = check_depth(text, MAX_DEPTH).is_err();
    let parsed = match parse_manifest(FILE, text) {
        Ok(parsed) => parsed,
        Err(error) => {
            let message = error.to_string();
            check_message(&message);
            assert_eq!(
                too_deep,
                matches!(error, ParseError::TooDeep { .. }),
                "pre-scan and parser disagree: {message}"
            );
            return ManifestReport::Refused(message);
        }
    };
    assert!(!too_deep, "the pre-scan refused a file the parser read");
    for warning in &parsed.warnings {
        check_message(warning);
        assert!(
            warning[FILE_SHOWN.len()..].starts_with(" document "),
            "warning names no document: {warning:?}"
        );
    }
    let mut objects = ClusterObjects::default();
    for object in &parsed.objects {
        let meta = match object {
            ManifestObject::Service(s) => &s.metadata,
            ManifestObject::EndpointSlice(s) => &s.metadata,
            ManifestObject::Endpoints(e) => &e.metadata,
            ManifestObject::Node(n) => &n.metadata,
        };
        for text in [&meta.name, &meta.namespace].into_iter().flatten() {
            assert!(
                !super::checks::has_control(text),
                "an object named {text:?} came out of the parser"
            );
        }
        // As the manifest source does: later objects replace earlier ones of the same key.
        match object.clone() {
            ManifestObject::Service(s) => drop(objects.insert_service_arc(s)),
            ManifestObject::EndpointSlice(s) => drop(objects.insert_slice_arc(s)),
            ManifestObject::Endpoints(e) => drop(objects.insert_endpoints_arc(e)),
            ManifestObject::Node(n) => drop(objects.insert_node_arc(n)),
        }
    }
    let steps = super::node_contexts()
        .iter()
        .flat_map(|node| super::objects(&objects, node))
        .collect();
    ManifestReport::Parsed {
        warnings: parsed.warnings,
        objects: parsed.objects.len(),
        steps,
    }
}

fn check_message(message: &str) {
    assert!(
        message.starts_with(FILE_SHOWN),
        "message does not name the file: {message:?}"
    );
    assert!(
        !super::checks::has_control(message),
        "control character in {message:?}"
    );
}
