//! The committed fuzz corpus (`proxy/fuzz/corpus/`: seeds, hostile inputs, everything the
//! fuzzers kept or crashed on) run through the same harness as the fuzz targets, as ordinary
//! tests: no panic, every invariant of `crate::fuzzing` holds; and the hostile manifests
//! come out as the operator should read them.
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use crate::fuzzing::{self, ManifestReport};

fn corpus(target: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let files: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("corpus file"))
        })
        .collect();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

/// Runs `check` on every file of `target`'s corpus; fails naming every file that panicked.
fn run_all<R>(target: &str, check: impl Fn(&[u8]) -> R) -> BTreeMap<String, R> {
    let mut out = BTreeMap::new();
    let mut failed = Vec::new();
    for (name, data) in corpus(target) {
        match catch_unwind(AssertUnwindSafe(|| check(&data))) {
            Ok(report) => drop(out.insert(name, report)),
            Err(_) => failed.push(name),
        }
    }
    assert!(
        failed.is_empty(),
        "{target} corpus files failing: {failed:?}"
    );
    out
}

#[test]
fn every_model_input_of_the_fuzz_corpus_keeps_the_invariants() {
    let reports = run_all("model", fuzzing::model);
    assert!(
        reports
            .values()
            .any(|steps| steps.iter().any(|s| s.ports > 0)),
        "no model input produced a service port"
    );
}

/// The parser's warnings and the model's, as text.
fn messages(report: &ManifestReport) -> Vec<String> {
    match report {
        ManifestReport::NotText => vec!["<not UTF-8>".into()],
        ManifestReport::Refused(message) => vec![message.clone()],
        ManifestReport::Parsed {
            warnings, steps, ..
        } => warnings
            .iter()
            .cloned()
            .chain(
                steps
                    .iter()
                    .flat_map(|s| s.warnings.iter().map(ToString::to_string)),
            )
            .collect(),
    }
}

#[test]
fn every_manifest_of_the_fuzz_corpus_keeps_the_invariants_and_hostile_ones_are_named() {
    let reports = run_all("manifest", fuzzing::manifest);
    let shows = |file: &str, want: &str| {
        let report = reports
            .get(file)
            .unwrap_or_else(|| panic!("{file} is not in the corpus"));
        let all = messages(report);
        assert!(
            all.iter().any(|m| m.contains(want)),
            "{file}: no message contains {want:?}: {all:#?}"
        );
    };
    let objects = |file: &str| match &reports[file] {
        ManifestReport::Parsed { objects, .. } => *objects,
        other => panic!("{file}: {other:?}"),
    };
    let refused = "fuzz\\n.yaml: YAML nested deeper than 64 levels (line 1)";
    shows("deep-flow-nesting.yaml", refused);
    shows(
        "deep-flow-nesting-unclosed.yaml",
        "nested deeper than 64 levels (line 2)",
    );
    shows("deep-block-sequences.yaml", refused);
    shows(
        "deep-indented-mappings.yaml",
        "nested deeper than 64 levels (line 65)",
    );
    assert_eq!(objects("deep-nesting-at-the-limit.yaml"), 0);
    assert!(objects("example-web.yaml") > 0);

    shows(
        "name-with-newline.yaml",
        "fuzz\\n.yaml document 0 (Service evil\\nWARN forged line): metadata.name: contains control characters; skipping the document",
    );
    assert_eq!(
        objects("name-with-newline.yaml"),
        1,
        "the other service loads"
    );
    shows(
        "namespace-with-escape.yaml",
        "metadata.namespace: contains control characters",
    );
    shows(
        "name-with-bidi-override.yaml",
        "metadata.name: contains control characters",
    );
    shows(
        "name-with-cr-and-nul.yaml",
        "(Service a\\rb\\0c): metadata.name",
    );
    shows(
        "port-name-with-newline.yaml",
        "Service hostile/pn: spec.ports[0].name: \"a\\nWARN forged\" contains control characters",
    );
    shows(
        "missing-name.yaml",
        "Service hostile/: metadata.name: missing; a Service needs a name",
    );

    // A number no YAML value holds refuses the whole file (which keeps its previous objects),
    // naming the field and the line.
    shows(
        "port-2-to-the-64.yaml",
        "spec.ports[0].port: invalid type: integer `18446744073709551616` as u128, expected any YAML value at line 6",
    );
    shows(
        "huge-ports.yaml",
        "document 3 (Service pi32): spec.ports[0].port: invalid value: integer `2147483648`, expected i32",
    );
    shows(
        "huge-ports.yaml",
        "document 11 (Service aff): spec.sessionAffinityConfig.clientIP.timeoutSeconds: invalid value",
    );
    shows(
        "huge-ports.yaml",
        "Service hostile/p65536: spec.ports[0].port: 65536 is not a valid port number (1-65535)",
    );
    shows(
        "huge-ports.yaml",
        "Service hostile/np: spec.ports[0].nodePort: 99999 is outside the NodePort range",
    );
    shows(
        "wrong-types.yaml",
        "document 0 (Service t1): spec.ports[0].port: invalid type",
    );
    shows(
        "wrong-types.yaml",
        "document 1 (Service t2): spec.ports: invalid type",
    );
    shows(
        "invalid-ips.yaml",
        "Service hostile/ip1: spec.clusterIP: \"999.1.1.1\" is not a valid IP address",
    );
    shows(
        "invalid-ips.yaml",
        "EndpointSlice hostile/ip6-1: endpoints[0].addresses[0]: \"not-an-ip\" is not a valid IP address",
    );
    shows("conflicting-services.yaml", "hostile/second");
    shows(
        "duplicate-keys.yaml",
        "metadata: duplicate entry with key \"name\" at line 3 column 11",
    );
    shows("billion-laughs.yaml", "repetition limit exceeded");
    shows(
        "billion-laughs-in-a-service.yaml",
        "repetition limit exceeded",
    );
    shows("syntax-error.yaml", "fuzz\\n.yaml: YAML syntax error");
    assert!(matches!(reports["not-utf8.yaml"], ManifestReport::NotText));
}
