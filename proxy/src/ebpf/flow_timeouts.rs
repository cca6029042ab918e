//! The lifetimes of ebpf mode's packet-path flows are netfilter's: the node namespace's
//! `nf_conntrack_*` timeouts (which start-up has set from the `conntrack` section, as
//! kube-proxy does), netfilter's defaults where a value cannot be read (`nf_conntrack` not
//! loaded).
use std::path::Path;

use switchyard_model::tc_conntrack::FlowTimeouts;

/// Where the timeouts are, for this process's network namespace.
const NETFILTER_DIR: &str = "/proc/sys/net/netfilter";

/// Reads the timeouts (at start-up, and again at every verify).
pub fn read() -> FlowTimeouts {
    read_from(Path::new(NETFILTER_DIR))
}

fn read_from(dir: &Path) -> FlowTimeouts {
    FlowTimeouts::from_netfilter(|name| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|text| text.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn values_come_from_the_files_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("swy-flow-timeouts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("nf_conntrack_tcp_timeout_time_wait"), "7\n").expect("write");
        std::fs::write(dir.join("nf_conntrack_udp_timeout"), "garbage").expect("write");
        let read = super::read_from(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let defaults = super::FlowTimeouts::default();
        assert_eq!(read.tcp_time_wait, Duration::from_secs(7));
        assert_eq!(read.udp, defaults.udp, "unparsable: the default");
        assert_eq!(
            read.tcp_established, defaults.tcp_established,
            "missing: the default"
        );
    }
}
