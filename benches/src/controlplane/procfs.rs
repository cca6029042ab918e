//! CPU time and memory of the proxy process, from `/proc/PID/stat` and `/proc/PID/status`.
use anyhow::{bail, Context};

/// CPU time consumed so far, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// utime + stime of the process (all its threads).
    pub own: u64,
    /// cutime + cstime: reaped children, i.e. the `iptables-restore`, `iptables`, `nft` and
    /// `conntrack` runs of iptables mode.
    pub children: u64,
}

impl CpuTimes {
    /// Reads `/proc/PID/stat`.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Self::parse(&stat).with_context(|| format!("parsing {path}"))
    }

    fn parse(stat: &str) -> anyhow::Result<Self> {
        // The command name (field 2) may contain spaces and parentheses: count fields from
        // the last ')'. After it come field 3 (state) onwards, so field n is at n - 3.
        let (_, rest) = stat.rsplit_once(')').context("no ')' in stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> anyhow::Result<u64> {
            let raw = fields.get(n - 3).context("stat too short")?;
            raw.parse().with_context(|| format!("field {n}: {raw:?}"))
        };
        Ok(Self {
            own: field(14)? + field(15)?,
            children: field(16)? + field(17)?,
        })
    }
}

/// Clock ticks per second (`USER_HZ`), the unit of [`CpuTimes`].
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Linux has used 100 everywhere for decades; sysconf failing is not worth an error.
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Resident memory of the process, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// VmHWM: the peak resident set size.
    pub peak_kib: u64,
    /// VmRSS: the resident set size now.
    pub now_kib: u64,
}

impl Memory {
    /// Reads `/proc/PID/status`.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Self::parse(&status).with_context(|| format!("parsing {path}"))
    }

    fn parse(status: &str) -> anyhow::Result<Self> {
        let kib = |key: &str| -> anyhow::Result<u64> {
            let Some(line) = status.lines().find_map(|l| l.strip_prefix(key)) else {
                bail!("no {key} line");
            };
            let value = line.trim().trim_end_matches("kB").trim();
            value.parse().with_context(|| format!("{key} {value:?}"))
        };
        Ok(Self {
            peak_kib: kib("VmHWM:")?,
            now_kib: kib("VmRSS:")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let stat = "4242 (sw (y) ard) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 4 0 12345 1000000 500 18446744073709551615";
        let t = CpuTimes::parse(stat).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                own: 300,
                children: 10
            }
        );
    }

    #[test]
    fn status_gives_peak_and_current_rss() {
        let status =
            "Name:\tswitchyard\nVmPeak:\t  900000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t   65432 kB\n";
        let m = Memory::parse(status).unwrap();
        assert_eq!(
            m,
            Memory {
                peak_kib: 123456,
                now_kib: 65432
            }
        );
    }

    #[test]
    fn the_running_process_can_be_read() {
        let me = std::process::id();
        assert!(Memory::of(me).unwrap().peak_kib > 0);
        CpuTimes::of(me).unwrap();
        assert!(clock_ticks() > 0);
    }
}
