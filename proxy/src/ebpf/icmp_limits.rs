//! The kernel's ICMP rate limits of the node namespace (`net.ipv4.icmp_*`), which the tc
//! programs apply to the port unreachable answers they send in the kernel's place.
use std::path::Path;

use switchyard_common::RefusalLimits;

/// Where the sysctls are, for this process's network namespace.
const IPV4_DIR: &str = "/proc/sys/net/ipv4";
/// ICMP type "destination unreachable", whose bit in `icmp_ratemask` turns the limits on.
const ICMP_DEST_UNREACH: u32 = 3;
/// The kernel's per-client burst, in answers (`XRLIM_BURST_FACTOR`).
const CLIENT_BURST: u64 = 6;

/// Reads the limits (at start-up, and again at every verify).
pub fn read() -> RefusalLimits {
    read_from(Path::new(IPV4_DIR))
}

fn read_from(dir: &Path) -> RefusalLimits {
    let value = |name: &str, default: u64| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(default)
    };
    // The kernel's defaults where a value cannot be read.
    let ratemask = value("icmp_ratemask", 6168);
    if ratemask & (1 << ICMP_DEST_UNREACH) == 0 {
        return RefusalLimits::default();
    }
    let per_sec = value("icmp_msgs_per_sec", 1000);
    let client_interval_ns = value("icmp_ratelimit", 1000).saturating_mul(1_000_000);
    // 0 per second: no node-wide limit.
    let global_interval_ns = 1_000_000_000u64.checked_div(per_sec).unwrap_or(0);
    RefusalLimits {
        client_interval_ns,
        client_burst_ns: client_interval_ns.saturating_mul(CLIENT_BURST),
        global_interval_ns,
        global_burst_ns: global_interval_ns.saturating_mul(value("icmp_msgs_burst", 50)),
    }
}

#[cfg(test)]
mod tests {
    use switchyard_common::RefusalLimits;

    fn with_files(files: &[(&str, &str)]) -> RefusalLimits {
        let dir = std::env::temp_dir().join(format!(
            "swy-icmp-limits-{}-{}",
            std::process::id(),
            files.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let read = super::read_from(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        read
    }

    #[test]
    fn the_kernels_defaults_when_nothing_can_be_read() {
        assert_eq!(
            with_files(&[]),
            RefusalLimits {
                client_interval_ns: 1_000_000_000,
                client_burst_ns: 6_000_000_000,
                global_interval_ns: 1_000_000,
                global_burst_ns: 50_000_000,
            }
        );
    }

    #[test]
    fn values_come_from_the_sysctls_and_zero_or_the_mask_turn_limits_off() {
        let read = with_files(&[
            ("icmp_ratelimit", "0\n"),
            ("icmp_msgs_per_sec", "250\n"),
            ("icmp_msgs_burst", "10\n"),
        ]);
        assert_eq!(
            read,
            RefusalLimits {
                client_interval_ns: 0,
                client_burst_ns: 0,
                global_interval_ns: 4_000_000,
                global_burst_ns: 40_000_000,
            }
        );
        let unmasked = with_files(&[("icmp_ratemask", "0"), ("icmp_ratelimit", "1000")]);
        assert_eq!(unmasked, RefusalLimits::default());
    }
}
