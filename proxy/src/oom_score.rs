//! `oomScoreAdj`: the process's standing with the kernel's OOM killer, set at start as
//! kube-proxy does (default -999, so the node's proxy is about the last thing killed).
use std::io;

/// Where the kernel takes the adjustment of the calling process.
const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// Writes `value` (-1000..=1000) as this process's `oom_score_adj`. Lowering it needs
/// `CAP_SYS_RESOURCE`; a container may forbid it, which callers treat as a warning.
pub fn set_oom_score_adj(value: i32) -> io::Result<()> {
    std::fs::write(OOM_SCORE_ADJ, value.to_string())
}

/// The process's current `oom_score_adj`.
pub fn oom_score_adj() -> io::Result<i32> {
    let text = std::fs::read_to_string(OOM_SCORE_ADJ)?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_current_value_reads_back() {
        // Writing the value it already has changes nothing, and needs no privilege.
        let current = super::oom_score_adj().expect("read oom_score_adj");
        super::set_oom_score_adj(current).expect("write the same value");
        assert_eq!(super::oom_score_adj().unwrap(), current);
    }
}
