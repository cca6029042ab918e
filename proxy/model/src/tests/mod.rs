//! Table-driven tests of the model, one file per rule family.

// Table rows are tuples on purpose: each row reads left to right as case, input, expectation.
#![allow(clippy::type_complexity)]

mod categorize;
mod conflicts;
mod conntrack;
mod diff;
mod endpoints;
pub(crate) mod fixtures;
mod fuzz_corpus;
mod health_check;
mod invalid;
mod node_and_objects;
mod services;
mod sync_counts;
mod topology;
mod topology_hints;
