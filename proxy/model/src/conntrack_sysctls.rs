//! Which netfilter conntrack sysctls start-up writes, decided as kube-proxy 1.35 decides it
//! (`cmd/kube-proxy/app/server_linux.go` `setupConntrack` and `conntrack.go`), without I/O:
//! the caller reads the current values and writes what [`plan`] returns.
//!
//! Upstream's rules, kept here:
//! - `nf_conntrack_max` is `maxPerCore` × CPUs, or `min` when that is larger; `maxPerCore: 0`
//!   leaves it (and the hash size) alone and ignores `min`. It is written when it differs,
//!   up or down.
//! - The hash size (the `nf_conntrack` module's `hashsize` parameter) is raised to a quarter of
//!   that maximum when it is smaller, never lowered.
//! - Each timeout is written, in whole seconds, when it is above zero and differs; zero leaves
//!   it as it is. `tcpBeLiberal: true` writes 1; false leaves it.
//!
//! (1.36 caps the computed maximum at 1,048,576; 1.35 does not, and neither does this.)
use std::time::Duration;

/// The `conntrack` section of a KubeProxyConfiguration (or the `--conntrack-*` flags),
/// defaulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// `maxPerCore`: entries per CPU; 0 leaves `nf_conntrack_max` alone.
    pub max_per_core: u32,
    /// `min`: the least `nf_conntrack_max` is set to (when `max_per_core` is not 0).
    pub min: u32,
    /// `tcpEstablishedTimeout`; zero leaves it.
    pub tcp_established_timeout: Duration,
    /// `tcpCloseWaitTimeout`; zero leaves it.
    pub tcp_close_wait_timeout: Duration,
    /// `tcpBeLiberal`: true sets `nf_conntrack_tcp_be_liberal` to 1; false leaves it.
    pub tcp_be_liberal: bool,
    /// `udpTimeout` (unreplied UDP); zero leaves it.
    pub udp_timeout: Duration,
    /// `udpStreamTimeout` (assured UDP); zero leaves it.
    pub udp_stream_timeout: Duration,
}

impl Default for ConntrackSettings {
    /// Upstream's defaults (`pkg/proxy/apis/config/v1alpha1/defaults.go`).
    fn default() -> Self {
        Self {
            max_per_core: 32 * 1024,
            min: 128 * 1024,
            tcp_established_timeout: Duration::from_secs(24 * 3600),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

impl ConntrackSettings {
    /// Settings that write nothing.
    pub fn untouched() -> Self {
        Self {
            max_per_core: 0,
            min: 0,
            tcp_established_timeout: Duration::ZERO,
            tcp_close_wait_timeout: Duration::ZERO,
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

/// How far a value reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The node's network namespace only (the process's).
    PerNetns,
    /// The whole machine: writable only from the initial network namespace.
    Global,
}

/// A kernel value start-up may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Knob {
    /// `net.netfilter.nf_conntrack_max`.
    Max,
    /// The `nf_conntrack` module's `hashsize` parameter (buckets of the table).
    Hashsize,
    /// `net.netfilter.nf_conntrack_tcp_timeout_established`.
    TcpTimeoutEstablished,
    /// `net.netfilter.nf_conntrack_tcp_timeout_close_wait`.
    TcpTimeoutCloseWait,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal`.
    TcpBeLiberal,
    /// `net.netfilter.nf_conntrack_udp_timeout`.
    UdpTimeout,
    /// `net.netfilter.nf_conntrack_udp_timeout_stream`.
    UdpTimeoutStream,
}

impl Knob {
    /// Where the value lives: a path under `/proc/sys`, except the hash size, which is a
    /// module parameter under `/sys`.
    pub fn path(self) -> &'static str {
        match self {
            Knob::Max => "/proc/sys/net/netfilter/nf_conntrack_max",
            Knob::Hashsize => "/sys/module/nf_conntrack/parameters/hashsize",
            Knob::TcpTimeoutEstablished => {
                "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"
            }
            Knob::TcpTimeoutCloseWait => {
                "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait"
            }
            Knob::TcpBeLiberal => "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal",
            Knob::UdpTimeout => "/proc/sys/net/netfilter/nf_conntrack_udp_timeout",
            Knob::UdpTimeoutStream => "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream",
        }
    }

    /// Whether writing it changes the machine or only the node's namespace. The timeouts and
    /// `be_liberal` are per namespace; `nf_conntrack_max` is one value for the machine
    /// (read-only outside the initial namespace), and so is the hash size.
    pub fn scope(self) -> Scope {
        match self {
            Knob::Max | Knob::Hashsize => Scope::Global,
            Knob::TcpTimeoutEstablished
            | Knob::TcpTimeoutCloseWait
            | Knob::TcpBeLiberal
            | Knob::UdpTimeout
            | Knob::UdpTimeoutStream => Scope::PerNetns,
        }
    }
}

impl std::fmt::Display for Knob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path();
        // Sysctls by their dotted name, the module parameter by its path.
        match path.strip_prefix("/proc/sys/") {
            Some(name) => f.write_str(&name.replace('/', ".")),
            None => f.write_str(path),
        }
    }
}

/// What a knob should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// This value: written when the current one differs.
    Exactly(u64),
    /// At least this value: written when the current one is smaller.
    AtLeast(u64),
}

/// One knob and what it should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The knob.
    pub knob: Knob,
    /// Its wanted value.
    pub want: Want,
}

/// Upstream's `getConntrackMax`: `maxPerCore` × `cpus`, at least `min`; 0 (leave it) when
/// `maxPerCore` is 0.
pub fn conntrack_max(settings: &ConntrackSettings, cpus: u32) -> u64 {
    if settings.max_per_core == 0 {
        return 0;
    }
    let scaled = u64::from(settings.max_per_core) * u64::from(cpus);
    scaled.max(u64::from(settings.min))
}

/// A timeout in whole seconds, as upstream's `int(d / time.Second)`; `None` for zero, which
/// leaves the sysctl alone. (A positive duration under a second becomes 0 seconds, as it does
/// upstream.)
fn seconds(timeout: Duration) -> Option<u64> {
    (!timeout.is_zero()).then_some(timeout.as_secs())
}

/// Every knob the settings ask for, in upstream's order.
pub fn targets(settings: &ConntrackSettings, cpus: u32) -> Vec<Target> {
    let mut out = Vec::new();
    let max = conntrack_max(settings, cpus);
    if max > 0 {
        out.push(Target {
            knob: Knob::Max,
            want: Want::Exactly(max),
        });
        out.push(Target {
            knob: Knob::Hashsize,
            want: Want::AtLeast(max / 4),
        });
    }
    let timeouts = [
        (
            Knob::TcpTimeoutEstablished,
            settings.tcp_established_timeout,
        ),
        (Knob::TcpTimeoutCloseWait, settings.tcp_close_wait_timeout),
    ];
    for (knob, timeout) in timeouts {
        if let Some(value) = seconds(timeout) {
            out.push(Target {
                knob,
                want: Want::Exactly(value),
            });
        }
    }
    if settings.tcp_be_liberal {
        out.push(Target {
            knob: Knob::TcpBeLiberal,
            want: Want::Exactly(1),
        });
    }
    let timeouts = [
        (Knob::UdpTimeout, settings.udp_timeout),
        (Knob::UdpTimeoutStream, settings.udp_stream_timeout),
    ];
    for (knob, timeout) in timeouts {
        if let Some(value) = seconds(timeout) {
            out.push(Target {
                knob,
                want: Want::Exactly(value),
            });
        }
    }
    out
}

impl Want {
    /// The value to write given the current one (`None`: unreadable, written as upstream
    /// writes when its read fails), or `None` when it already holds.
    pub fn write_over(self, current: Option<u64>) -> Option<u64> {
        match self {
            Want::Exactly(value) => (current != Some(value)).then_some(value),
            Want::AtLeast(value) => current.is_none_or(|c| c < value).then_some(value),
        }
    }
}

/// The writes that bring the knobs to the settings, in order: `(knob, value)` for each knob
/// whose `current` value does not hold yet.
pub fn plan(
    settings: &ConntrackSettings,
    cpus: u32,
    current: impl Fn(Knob) -> Option<u64>,
) -> Vec<(Knob, u64)> {
    targets(settings, cpus)
        .into_iter()
        .filter_map(|t| t.want.write_over(current(t.knob)).map(|v| (t.knob, v)))
        .collect()
}

/// The number of CPUs in a kernel CPU list such as `/sys/devices/system/cpu/online`
/// (`0-3,8,10-11`); `None` when it is not one.
pub fn count_cpu_list(text: &str) -> Option<u32> {
    let mut count = 0u32;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?),
            None => {
                let cpu = part.parse::<u32>().ok()?;
                (cpu, cpu)
            }
        };
        if hi < lo {
            return None;
        }
        count = count.checked_add(hi - lo + 1)?;
    }
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Kernel defaults of a fresh namespace on a 262144-entry machine.
    fn kernel() -> BTreeMap<Knob, u64> {
        BTreeMap::from([
            (Knob::Max, 262_144),
            (Knob::Hashsize, 65_536),
            (Knob::TcpTimeoutEstablished, 432_000),
            (Knob::TcpTimeoutCloseWait, 60),
            (Knob::TcpBeLiberal, 0),
            (Knob::UdpTimeout, 30),
            (Knob::UdpTimeoutStream, 120),
        ])
    }

    #[test]
    fn conntrack_max_as_upstream() {
        // Upstream's TestGetConntrackMax cases, plus the CPU scaling.
        let with = |max_per_core, min| ConntrackSettings {
            max_per_core,
            min,
            ..ConntrackSettings::default()
        };
        let cases: &[(&str, ConntrackSettings, u32, u64)] = &[
            (
                "defaults, 2 CPUs: min wins",
                ConntrackSettings::default(),
                2,
                131_072,
            ),
            (
                "defaults, 8 CPUs: scaled wins",
                ConntrackSettings::default(),
                8,
                262_144,
            ),
            (
                "maxPerCore 0 leaves it, min ignored",
                with(0, 131_072),
                64,
                0,
            ),
            ("scaled above min", with(67_890, 1), 3, 203_670),
            ("min above scaled", with(4, 10_000), 2, 10_000),
            ("min 0", with(1_000, 0), 2, 2_000),
            ("equal: either", with(50_000, 100_000), 2, 100_000),
        ];
        for (name, settings, cpus, want) in cases {
            assert_eq!(conntrack_max(settings, *cpus), *want, "{name}");
        }
    }

    #[test]
    fn writes_as_upstream() {
        let defaults = ConntrackSettings::default();
        let all_set = ConntrackSettings {
            max_per_core: 0,
            min: 0,
            tcp_established_timeout: 2 * HOUR,
            tcp_close_wait_timeout: Duration::from_secs(90),
            tcp_be_liberal: true,
            udp_timeout: Duration::from_secs(15),
            udp_stream_timeout: Duration::from_secs(100),
        };
        let kernel = kernel();
        let mut kube_proxy_ran = kernel.clone();
        kube_proxy_ran.extend([
            (Knob::Max, 131_072),
            (Knob::TcpTimeoutEstablished, 86_400),
            (Knob::TcpTimeoutCloseWait, 3_600),
        ]);
        let mut small_table = kernel.clone();
        small_table.extend([(Knob::Max, 65_536), (Knob::Hashsize, 16_384)]);
        let mut liberal = kernel.clone();
        liberal.insert(Knob::TcpBeLiberal, 1);
        let unreadable = BTreeMap::new();

        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            ConntrackSettings,
            u32,
            &BTreeMap<Knob, u64>,
            Vec<(Knob, u64)>,
        )> = vec![
            (
                "defaults on a fresh node: max lowered to min, hash size big enough, TCP timeouts",
                defaults,
                2,
                &kernel,
                vec![
                    (Knob::Max, 131_072),
                    (Knob::TcpTimeoutEstablished, 86_400),
                    (Knob::TcpTimeoutCloseWait, 3_600),
                ],
            ),
            (
                "defaults again (a restart): nothing differs, nothing is written",
                defaults,
                2,
                &kube_proxy_ran,
                vec![],
            ),
            (
                "a small table: max raised, hash size raised to a quarter of it",
                ConntrackSettings {
                    max_per_core: 65_536,
                    ..defaults
                },
                4,
                &small_table,
                vec![
                    (Knob::Max, 262_144),
                    (Knob::Hashsize, 65_536),
                    (Knob::TcpTimeoutEstablished, 86_400),
                    (Knob::TcpTimeoutCloseWait, 3_600),
                ],
            ),
            (
                "a hash size larger than needed is not lowered",
                ConntrackSettings {
                    max_per_core: 1_000,
                    min: 1_000,
                    ..ConntrackSettings::untouched()
                },
                1,
                &kernel,
                vec![(Knob::Max, 1_000)],
            ),
            (
                "maxPerCore 0: neither the maximum nor the hash size (the testbed's setting)",
                ConntrackSettings {
                    max_per_core: 0,
                    ..defaults
                },
                2,
                &kernel,
                vec![
                    (Knob::TcpTimeoutEstablished, 86_400),
                    (Knob::TcpTimeoutCloseWait, 3_600),
                ],
            ),
            (
                "everything zero: nothing",
                ConntrackSettings::untouched(),
                2,
                &kernel,
                vec![],
            ),
            (
                "every per-namespace value set",
                all_set,
                2,
                &kernel,
                vec![
                    (Knob::TcpTimeoutEstablished, 7_200),
                    (Knob::TcpTimeoutCloseWait, 90),
                    (Knob::TcpBeLiberal, 1),
                    (Knob::UdpTimeout, 15),
                    (Knob::UdpTimeoutStream, 100),
                ],
            ),
            (
                "tcpBeLiberal false never turns it off",
                ConntrackSettings {
                    tcp_be_liberal: false,
                    ..ConntrackSettings::untouched()
                },
                2,
                &liberal,
                vec![],
            ),
            (
                "tcpBeLiberal already 1: not written",
                ConntrackSettings {
                    tcp_be_liberal: true,
                    ..ConntrackSettings::untouched()
                },
                2,
                &liberal,
                vec![],
            ),
            (
                "fractions of a second are cut, as upstream's int(d / time.Second)",
                ConntrackSettings {
                    udp_timeout: Duration::from_millis(2_900),
                    ..ConntrackSettings::untouched()
                },
                2,
                &kernel,
                vec![(Knob::UdpTimeout, 2)],
            ),
            (
                "unreadable values are written",
                ConntrackSettings {
                    max_per_core: 10,
                    min: 8,
                    ..ConntrackSettings::untouched()
                },
                1,
                &unreadable,
                vec![(Knob::Max, 10), (Knob::Hashsize, 2)],
            ),
        ];
        for (name, settings, cpus, current, want) in cases {
            let got = plan(&settings, cpus, |k| current.get(&k).copied());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn only_the_maximum_and_the_hash_size_are_global() {
        let global: Vec<Knob> = targets(
            &ConntrackSettings {
                tcp_be_liberal: true,
                udp_timeout: HOUR,
                udp_stream_timeout: HOUR,
                ..ConntrackSettings::default()
            },
            2,
        )
        .into_iter()
        .map(|t| t.knob)
        .filter(|k| k.scope() == Scope::Global)
        .collect();
        assert_eq!(global, vec![Knob::Max, Knob::Hashsize]);
        assert_eq!(Knob::Max.to_string(), "net.netfilter.nf_conntrack_max");
        assert_eq!(
            Knob::Hashsize.to_string(),
            "/sys/module/nf_conntrack/parameters/hashsize"
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }
}
