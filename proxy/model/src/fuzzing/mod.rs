//! The harness shared by the fuzz targets (`proxy/fuzz/`) and the corpus regression test:
//! inputs decoded into object changes or manifests, and the invariants checked after every
//! change. Built for this crate's tests and with the `fuzzing` feature only.
//!
//! Every entry point panics when an invariant fails (that is how libFuzzer learns of it) and
//! otherwise returns what it checked, so a test can tell that an input reached the model.

mod bytes;
mod changes;
mod checks;
mod manifest;

pub use bytes::Bytes;
pub use changes::{decode, node_context, Change};
pub use checks::{Pipeline, StepReport};
pub use manifest::{manifest, ManifestReport, FILE};

use crate::{ClusterObjects, NodeContext};

/// At most this many changes are decoded from one input: longer inputs add time, not depth.
pub const MAX_CHANGES: usize = 64;

/// The `model` target: `data` decoded into a sequence of object changes (see [`decode`]),
/// each applied to the objects and followed by a [`Pipeline::step`]. Returns the reports.
pub fn model(data: &[u8]) -> Vec<StepReport> {
    let mut objects = ClusterObjects::default();
    let mut node = node_context(0);
    let mut pipeline = Pipeline::default();
    let mut reports = Vec::new();
    for change in decode(data) {
        change.apply(&mut objects, &mut node);
        reports.push(pipeline.step(&objects, &node, &change));
    }
    reports
}

/// The `manifest` target's model half: `objects` (what a manifest yielded) through the
/// pipeline, then again with every other object removed, then with nothing, so that the
/// incremental cache also sees these objects go.
pub fn objects(objects: &ClusterObjects, node: &NodeContext) -> Vec<StepReport> {
    let mut pipeline = Pipeline::default();
    let mut reports = vec![pipeline.step(objects, node, &"all objects")];
    let mut half = objects.clone();
    let mut keep = false;
    half.services.retain(|_, _| {
        keep = !keep;
        keep
    });
    half.endpoint_slices.retain(|_, _| {
        keep = !keep;
        keep
    });
    half.endpoints.retain(|_, _| {
        keep = !keep;
        keep
    });
    reports.push(pipeline.step(&half, node, &"every other object removed"));
    reports.push(pipeline.step(&ClusterObjects::default(), node, &"all removed"));
    reports
}

/// The node contexts a manifest is computed for: IPv4, IPv6 and dual-stack.
pub fn node_contexts() -> Vec<NodeContext> {
    (0..3).map(node_context).collect()
}
