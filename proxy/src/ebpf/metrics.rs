//! ebpf mode's state as gauges: entries and capacity of every pinned map, and the pinned
//! links per program. The dataplane sets them at full syncs and verifies (every
//! `syncPeriod`), so a scrape costs no syscall; the start-up's program load (its time and the
//! verifier's instructions per program), set once. One counter: the sockets destroyed.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label naming a map.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    /// Map name, e.g. `SWY_SERVICES`.
    pub map: &'static str,
}

/// Label naming a program.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    /// Program name, e.g. `swy_connect4`.
    pub program: &'static str,
}

/// The gauges; clones share them.
#[derive(Clone, Debug, Default)]
pub struct EbpfMetrics {
    /// `switchyard_ebpf_map_entries{map}`: entries a map holds.
    pub map_entries: Family<MapLabel, Gauge>,
    /// `switchyard_ebpf_map_capacity{map}`: its `max_entries`.
    pub map_capacity: Family<MapLabel, Gauge>,
    /// `switchyard_ebpf_links{program}`: pinned links attaching the program (the socket
    /// programs once each, the tc programs once per device).
    pub links: Family<ProgramLabel, Gauge>,
    /// `switchyard_ebpf_sockets_destroyed_total`: connected UDP sockets destroyed because
    /// their backend left the service they were connected to.
    pub sockets_destroyed: Counter,
    /// `switchyard_ebpf_program_load_seconds`: what loading the programs took at start-up
    /// (maps, the kernel's BTF, the verifier), before the first sync could start.
    pub program_load_seconds: Gauge<f64, AtomicU64>,
    /// `switchyard_ebpf_program_verified_instructions{program}`: instructions the verifier
    /// processed to load the program.
    pub verified_instructions: Family<ProgramLabel, Gauge>,
}

impl EbpfMetrics {
    /// Registers the gauges under `switchyard_`.
    pub fn register(&self, registry: &mut Registry) {
        let sy = registry.sub_registry_with_prefix("switchyard");
        sy.register(
            "ebpf_map_entries",
            "Entries of each pinned eBPF map, as of the last verify",
            self.map_entries.clone(),
        );
        sy.register(
            "ebpf_map_capacity",
            "Capacity (max_entries) of each pinned eBPF map",
            self.map_capacity.clone(),
        );
        sy.register(
            "ebpf_links",
            "Pinned links attaching each eBPF program, as of the last verify",
            self.links.clone(),
        );
        sy.register(
            "ebpf_program_load_seconds",
            "Time loading the eBPF programs took at start-up (maps, BTF, the verifier)",
            self.program_load_seconds.clone(),
        );
        sy.register(
            "ebpf_program_verified_instructions",
            "Instructions the kernel's verifier processed to load each eBPF program",
            self.verified_instructions.clone(),
        );
        sy.register(
            "ebpf_sockets_destroyed",
            "Connected UDP sockets destroyed because their backend left the service",
            self.sockets_destroyed.clone(),
        );
    }

    /// Records one map's entries and capacity.
    pub fn set_map(&self, map: &'static str, entries: u64, capacity: u32) {
        let label = MapLabel { map };
        self.map_entries
            .get_or_create(&label)
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.map_capacity
            .get_or_create(&label)
            .set(i64::from(capacity));
    }

    /// Records the start-up's program load: its time and the verifier's instructions per
    /// program.
    pub fn set_program_load(&self, seconds: f64, verified: &[(&'static str, u32)]) {
        self.program_load_seconds.set(seconds);
        for &(program, count) in verified {
            self.verified_instructions
                .get_or_create(&ProgramLabel { program })
                .set(i64::from(count));
        }
    }

    /// Records the links per program (programs without a link are set to 0).
    pub fn set_links(&self, counts: &[(&'static str, u64)]) {
        for (program, n) in counts {
            self.links
                .get_or_create(&ProgramLabel { program })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_named_and_labelled() {
        let metrics = EbpfMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.set_map("SWY_SERVICES", 3, 262_144);
        metrics.set_links(&[("swy_connect4", 1), ("swy_tc_ingress", 2)]);
        metrics.sockets_destroyed.inc_by(2);
        metrics.set_program_load(0.25, &[("swy_tc_ingress", 100_215)]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "switchyard_ebpf_map_entries{map=\"SWY_SERVICES\"} 3",
            "switchyard_ebpf_map_capacity{map=\"SWY_SERVICES\"} 262144",
            "switchyard_ebpf_links{program=\"swy_connect4\"} 1",
            "switchyard_ebpf_links{program=\"swy_tc_ingress\"} 2",
            "switchyard_ebpf_sockets_destroyed_total 2",
            "switchyard_ebpf_program_load_seconds 0.25",
            "switchyard_ebpf_program_verified_instructions{program=\"swy_tc_ingress\"} 100215",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
