//! Object changes -> desired state (incremental and fresh) -> diff -> iptables rules and eBPF
//! map writes, checked after every change (`switchyard_model::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    switchyard_model::fuzzing::model(data);
});
