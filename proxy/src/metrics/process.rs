//! The `process_*` metrics Go's process collector exposes (and kube-proxy with it), read from
//! `/proc/self` at every scrape: CPU time, resident and virtual memory, open and maximum file
//! descriptors, start time.
//!
//! A file that cannot be read leaves its metrics out of that scrape; the rest still answer.
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/<pid>/stat`: the kernel's fixed `USER_HZ`, which Go's
/// procfs also assumes rather than asking sysconf.
const USER_HZ: f64 = 100.0;

/// Reads `/proc/self` when scraped. The start time cannot change, so it is read once: a
/// scrape reads `/proc/self/stat`, the fd directory and the limits, nothing machine-wide.
#[derive(Debug, Default)]
pub struct ProcessCollector {
    start_time_seconds: Option<f64>,
}

impl ProcessCollector {
    /// A collector for this process.
    pub fn new() -> Self {
        let stat = read_proc("/proc/self/stat").as_deref().and_then(parse_stat);
        let boot = read_proc("/proc/stat").as_deref().and_then(parse_boot_time);
        Self {
            start_time_seconds: stat
                .zip(boot)
                .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / USER_HZ),
        }
    }
}

fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// One reading of the process's figures; `None` where a file could not be read.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessFigures {
    /// User and system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    pub resident_bytes: Option<f64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<f64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// The fields of `/proc/<pid>/stat` we read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, clock ticks.
    pub start_ticks: u64,
    /// Virtual memory size, bytes.
    pub vsize: u64,
    /// Resident set size, pages (what Go's process collector reports, times the page size).
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // rest starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
pub fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft "Max open files" limit from `/proc/<pid>/limits` (`None` when unlimited).
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads this process's figures now; `start_time_seconds` is the collector's.
pub fn read_figures(start_time_seconds: Option<f64>) -> ProcessFigures {
    let stat = read_proc("/proc/self/stat").as_deref().and_then(parse_stat);
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    ProcessFigures {
        cpu_seconds: stat.map(|s| s.cpu_ticks as f64 / USER_HZ),
        resident_bytes: stat
            .filter(|_| page_size > 0)
            .map(|s| (s.rss_pages * page_size as u64) as f64),
        virtual_bytes: stat.map(|s| s.vsize as f64),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as f64),
        max_fds: read_proc("/proc/self/limits")
            .as_deref()
            .and_then(parse_max_fds)
            .map(|n| n as f64),
        start_time_seconds,
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = read_figures(self.start_time_seconds);
        if let Some(v) = f.cpu_seconds {
            let counter = ConstCounter::new(v);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                f.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                f.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                f.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                f.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                f.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(v) = value else { continue };
            let gauge = ConstGauge::new(v);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_as_the_kernel_writes_them() {
        // A command name with a space and a parenthesis, as `comm` may hold.
        let stat = "4242 (swy (x) y) S 1 4242 4242 0 -1 4194560 5000 0 3 0 \
                    250 150 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                cpu_ticks: 400,
                start_ticks: 123456,
                vsize: 987654321,
                rss_pages: 2048
            })
        );
        assert_eq!(parse_stat("4242 (cut"), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63000                63000                processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn this_process_has_figures() {
        let f = read_figures(ProcessCollector::new().start_time_seconds);
        assert!(f.cpu_seconds.is_some_and(|s| s >= 0.0), "{f:?}");
        assert!(f.resident_bytes.is_some_and(|b| b > 0.0), "{f:?}");
        assert!(f.open_fds.is_some_and(|n| n >= 3.0), "{f:?}");
        let started = f.start_time_seconds.expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0 * 365.0,
            "{started} vs {now}"
        );
    }
}
