//! Start-up's conntrack sysctls (upstream's `setupConntrack`): the knobs are read, the model
//! decides what to write ([`crate::model::conntrack_sysctls::plan`]), and the writes go
//! through a [`Sysctl`]: [`ProcSysctl`] for the node, a fake in the tests.
//!
//! `/proc/sys/net` shows the network namespace of the process, so the per-namespace values land
//! in the node's namespace (the host network in a DaemonSet). `nf_conntrack_max` and the hash
//! size are machine-wide; `--conntrack-max-per-core=0` leaves both alone (the testbed passes it).
//!
//! Errors are upstream's: a write the kernel refuses stops start-up, except the hash size on a
//! read-only `/sys` (a known container runtime issue), which is a warning. A value that does
//! not exist because `nf_conntrack` is not loaded (possible in ebpf mode) is a warning too:
//! there is no table to tune.
use std::io;

use crate::model::conntrack_sysctls::{plan, ConntrackSettings, Knob};

/// Reads and writes kernel values.
pub trait Sysctl {
    /// The current value.
    fn read(&self, knob: Knob) -> io::Result<u64>;
    /// Sets the value.
    fn write(&mut self, knob: Knob, value: u64) -> io::Result<()>;
}

/// The kernel's own, through `/proc/sys` and `/sys/module` of this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcSysctl;

impl Sysctl for ProcSysctl {
    fn read(&self, knob: Knob) -> io::Result<u64> {
        let text = std::fs::read_to_string(knob.path())?;
        text.trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {e}")))
    }

    fn write(&mut self, knob: Knob, value: u64) -> io::Result<()> {
        use std::io::Write;
        // Never created: a value that does not exist is NotFound.
        let mut file = std::fs::OpenOptions::new().write(true).open(knob.path())?;
        file.write_all(value.to_string().as_bytes())
    }
}

/// A conntrack sysctl that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// The hash size could not be read (upstream stops there too).
    #[error("reading {knob}")]
    Read {
        /// The knob.
        knob: Knob,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a write.
    #[error("setting {knob} to {value}{hint}")]
    Write {
        /// The knob.
        knob: Knob,
        /// The value.
        value: u64,
        /// What to do about it.
        hint: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What [`apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// `(knob, value)` written, in order.
    pub written: Vec<(Knob, u64)>,
    /// The hash size that was too small but could not be raised because `/sys` is read-only
    /// (upstream's "CRI error: /sys is read-only" event); start-up goes on.
    pub hashsize_read_only: Option<u64>,
    /// Knobs that do not exist (`nf_conntrack` not loaded), left out.
    pub missing: Vec<Knob>,
}

/// Brings the conntrack sysctls to `settings` on a machine with `cpus` CPUs.
pub fn apply(
    sysctl: &mut dyn Sysctl,
    settings: &ConntrackSettings,
    cpus: u32,
) -> Result<Applied, SysctlError> {
    let mut applied = Applied::default();
    let mut current = std::collections::BTreeMap::new();
    for target in crate::model::conntrack_sysctls::targets(settings, cpus) {
        match sysctl.read(target.knob) {
            Ok(value) => {
                current.insert(target.knob, value);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => applied.missing.push(target.knob),
            // Upstream fails when it cannot read the hash size; any other unreadable value is
            // written.
            Err(source) if target.knob == Knob::Hashsize => {
                return Err(SysctlError::Read {
                    knob: target.knob,
                    source,
                })
            }
            Err(_) => {}
        }
    }
    for (knob, value) in plan(settings, cpus, |k| current.get(&k).copied()) {
        if applied.missing.contains(&knob) {
            continue;
        }
        match sysctl.write(knob, value) {
            Ok(()) => applied.written.push((knob, value)),
            Err(e) if knob == Knob::Hashsize && e.kind() == io::ErrorKind::ReadOnlyFilesystem => {
                applied.hashsize_read_only = Some(value);
            }
            Err(source) => {
                return Err(SysctlError::Write {
                    knob,
                    value,
                    hint: hint(knob),
                    source,
                })
            }
        }
    }
    Ok(applied)
}

fn hint(knob: Knob) -> &'static str {
    match knob {
        Knob::Max | Knob::Hashsize => {
            " (kube-proxy fails the same way; conntrack.maxPerCore: 0 / \
             --conntrack-max-per-core=0 leaves the machine's limit as it is)"
        }
        _ => " (a zero conntrack timeout leaves it as it is)",
    }
}

/// The CPUs the table is sized for: every online CPU of the machine (upstream reads the
/// topology from sysfs, not the process's CPU set), else the ones this process may use.
pub fn machine_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|text| crate::model::conntrack_sysctls::count_cpu_list(&text))
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        })
}

/// Applies the settings to this node and logs each write as upstream does.
pub fn set_up(settings: &ConntrackSettings) -> Result<(), SysctlError> {
    let cpus = machine_cpus();
    let applied = apply(&mut ProcSysctl, settings, cpus)?;
    for (knob, value) in &applied.written {
        tracing::info!(entry = %knob, value, "set sysctl");
    }
    if !applied.missing.is_empty() {
        let missing: Vec<String> = applied.missing.iter().map(Knob::to_string).collect();
        tracing::warn!(
            ?missing,
            "nf_conntrack is not loaded: no conntrack table to tune, these are left out"
        );
    }
    if let Some(value) = applied.hashsize_read_only {
        tracing::warn!(
            wanted = value,
            "/sys is read-only: cannot raise the conntrack hash size ({}); problems may arise \
             later (a known container runtime issue)",
            Knob::Hashsize
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Values in memory (a knob without one does not exist); a knob listed in `refuse` fails
    /// its writes with that error, one in `unreadable` its reads.
    #[derive(Default)]
    struct FakeSysctl {
        values: BTreeMap<Knob, u64>,
        refuse: BTreeMap<Knob, io::ErrorKind>,
        unreadable: Vec<Knob>,
        writes: Vec<(Knob, u64)>,
    }

    impl Sysctl for FakeSysctl {
        fn read(&self, knob: Knob) -> io::Result<u64> {
            if self.unreadable.contains(&knob) {
                return Err(io::Error::from(io::ErrorKind::InvalidData));
            }
            self.values
                .get(&knob)
                .copied()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }

        fn write(&mut self, knob: Knob, value: u64) -> io::Result<()> {
            if let Some(kind) = self.refuse.get(&knob) {
                return Err(io::Error::from(*kind));
            }
            self.writes.push((knob, value));
            self.values.insert(knob, value);
            Ok(())
        }
    }

    fn node() -> FakeSysctl {
        FakeSysctl {
            values: BTreeMap::from([
                (Knob::Max, 65_536),
                (Knob::Hashsize, 16_384),
                (Knob::TcpTimeoutEstablished, 432_000),
                (Knob::TcpTimeoutCloseWait, 60),
                (Knob::TcpBeLiberal, 0),
                (Knob::UdpTimeout, 30),
                (Knob::UdpTimeoutStream, 120),
            ]),
            ..FakeSysctl::default()
        }
    }

    #[test]
    fn defaults_raise_the_table_and_set_the_tcp_timeouts_once() {
        let mut sysctl = node();
        let applied = apply(&mut sysctl, &ConntrackSettings::default(), 8).unwrap();
        let want = vec![
            (Knob::Max, 262_144),
            (Knob::Hashsize, 65_536),
            (Knob::TcpTimeoutEstablished, 86_400),
            (Knob::TcpTimeoutCloseWait, 3_600),
        ];
        assert_eq!(applied.written, want);
        assert_eq!(sysctl.writes, want);
        // A restart finds everything in place and writes nothing.
        let again = apply(&mut sysctl, &ConntrackSettings::default(), 8).unwrap();
        assert_eq!(again, Applied::default());
        assert_eq!(sysctl.writes.len(), 4);
    }

    #[test]
    fn leaving_the_limit_alone_touches_nothing_global() {
        let mut sysctl = node();
        let settings = ConntrackSettings {
            max_per_core: 0,
            tcp_be_liberal: true,
            udp_timeout: std::time::Duration::from_secs(10),
            ..ConntrackSettings::default()
        };
        apply(&mut sysctl, &settings, 64).unwrap();
        assert!(
            sysctl
                .writes
                .iter()
                .all(|(k, _)| k.scope() == crate::model::conntrack_sysctls::Scope::PerNetns),
            "{:?}",
            sysctl.writes
        );
        assert_eq!(sysctl.writes.len(), 4, "{:?}", sysctl.writes);
    }

    #[test]
    fn refusals_stop_start_up_except_a_read_only_sys() {
        // A namespace other than the initial one: nf_conntrack_max is read-only.
        let mut sysctl = node();
        sysctl
            .refuse
            .insert(Knob::Max, io::ErrorKind::PermissionDenied);
        let err = apply(&mut sysctl, &ConntrackSettings::default(), 8).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("setting net.netfilter.nf_conntrack_max to 262144")
                && text.contains("--conntrack-max-per-core=0"),
            "{text}"
        );
        assert!(sysctl.writes.is_empty(), "nothing after the refusal");

        // A read-only /sys: the hash size stays, the rest goes on.
        let mut sysctl = node();
        sysctl
            .refuse
            .insert(Knob::Hashsize, io::ErrorKind::ReadOnlyFilesystem);
        let applied = apply(&mut sysctl, &ConntrackSettings::default(), 8).unwrap();
        assert_eq!(applied.hashsize_read_only, Some(65_536));
        assert_eq!(applied.written.len(), 3, "{:?}", applied.written);

        // Any other refusal of the hash size stops start-up.
        let mut sysctl = node();
        sysctl
            .refuse
            .insert(Knob::Hashsize, io::ErrorKind::Unsupported);
        assert!(apply(&mut sysctl, &ConntrackSettings::default(), 8).is_err());

        // As does a hash size that cannot be read.
        let mut sysctl = node();
        sysctl.unreadable.push(Knob::Hashsize);
        let err = apply(&mut sysctl, &ConntrackSettings::default(), 8).unwrap_err();
        assert!(
            matches!(
                err,
                SysctlError::Read {
                    knob: Knob::Hashsize,
                    ..
                }
            ),
            "{err}"
        );

        // nf_conntrack not loaded: nothing to tune, start-up goes on.
        let mut sysctl = FakeSysctl::default();
        let applied = apply(&mut sysctl, &ConntrackSettings::default(), 8).unwrap();
        assert_eq!(
            applied.missing,
            vec![
                Knob::Max,
                Knob::Hashsize,
                Knob::TcpTimeoutEstablished,
                Knob::TcpTimeoutCloseWait
            ]
        );
        assert!(sysctl.writes.is_empty());

        // A timeout the kernel refuses names it.
        let mut sysctl = node();
        sysctl
            .refuse
            .insert(Knob::TcpTimeoutCloseWait, io::ErrorKind::PermissionDenied);
        let err = apply(
            &mut sysctl,
            &ConntrackSettings {
                max_per_core: 0,
                ..ConntrackSettings::default()
            },
            8,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("setting net.netfilter.nf_conntrack_tcp_timeout_close_wait to 3600"),
            "{err}"
        );
    }
}
