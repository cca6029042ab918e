//! Manifest bytes -> parser (depth pre-scan, YAML, objects) -> the model pipeline for each
//! node family, with the parser's promises checked (`switchyard_model::fuzzing::manifest`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    switchyard_model::fuzzing::manifest(data);
});
