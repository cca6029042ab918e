//! The vocabulary of the scenario table: what a scenario is, what a step does, and what an
//! expectation accepts. Pure data plus small builders; `runner.rs` gives it meaning.
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use switchyard_testbed::Proto;

/// The dataplane a run uses (`--proxy-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// kube-proxy-compatible iptables chains, on the backend `iptables` points at (nft here).
    Iptables,
    /// The same chains through iptables-legacy: same expectations as [`Mode::Iptables`].
    IptablesLegacy,
    /// eBPF programs.
    Ebpf,
}

impl Mode {
    /// The `--proxy-mode` value.
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Iptables | Mode::IptablesLegacy => "iptables",
            Mode::Ebpf => "ebpf",
        }
    }

    /// Further switchyard flags of the mode.
    pub fn extra_flags(self) -> &'static [&'static str] {
        match self {
            Mode::IptablesLegacy => &["--iptables-backend=legacy"],
            Mode::Iptables | Mode::Ebpf => &[],
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::IptablesLegacy => "iptables-legacy",
            other => other.flag(),
        })
    }
}

/// Where switchyard reads a scenario's objects from. Expectations do not depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `--manifests DIR`: the files are written to (and removed from) a directory.
    Manifests,
    /// `--kubeconfig FILE`: a fake API server per proxied node, fed the files' objects
    /// (see `api.rs`).
    Api,
}

impl Via {
    /// How a run is named in messages: `iptables`, `ebpf/api`, ...
    pub fn label(self, mode: Mode) -> String {
        match self {
            Via::Manifests => mode.to_string(),
            Via::Api => format!("{mode}/api"),
        }
    }
}

/// Whether a scenario runs in ebpf mode yet. Every scenario always runs in iptables mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ebpf {
    /// Runs (and must pass) in ebpf mode too.
    Enabled,
    /// `iptables only (ebpf: <reason>)`: needs something the eBPF dataplane does not have yet
    /// (the reason names the issue and the missing piece). Flip to [`Ebpf::Enabled`] when it
    /// lands; `SWY_SCENARIOS_PENDING=1` runs these in ebpf mode anyway, to try.
    IptablesOnly(&'static str),
}

/// A value that may differ between the two dataplanes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByMode<T> {
    /// The value in iptables mode.
    pub iptables: T,
    /// The value in ebpf mode.
    pub ebpf: T,
}

impl<T: Clone> ByMode<T> {
    /// The same value in both modes.
    pub fn both(value: T) -> Self {
        ByMode {
            iptables: value.clone(),
            ebpf: value,
        }
    }
}

impl<T> ByMode<T> {
    /// The value for `mode`.
    pub fn get(&self, mode: Mode) -> &T {
        match mode {
            Mode::Iptables | Mode::IptablesLegacy => &self.iptables,
            Mode::Ebpf => &self.ebpf,
        }
    }
}

/// Where a request is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// Pod `pod` of node `node` (1-based), e.g. `At::Pod(1, 2)` is node1-pod2 (198.19.1.12).
    Pod(usize, usize),
    /// The host network of node `n` (198.18.0.(10+n)).
    Node(usize),
    /// The external client, 203.0.113.10 (not in any node's cgroup).
    Client,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Pod(n, p) => write!(f, "node{n}-pod{p}"),
            At::Node(n) => write!(f, "node{n}"),
            At::Client => f.write_str("client"),
        }
    }
}

/// The client address a backend must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The requester's own address: the pod's IP, 203.0.113.10 for the client, and for a node
    /// any of that node's addresses (198.18.0.(10+n) or its pod gateway 198.19.n.1, whichever
    /// the route to the backend picks).
    Own,
    /// Some node's address (198.18.0.(10+n) or 198.19.n.1): the request was masqueraded.
    Node,
    /// Exactly this address.
    Ip(Ipv4Addr),
    /// ebpf mode's external traffic with externalTrafficPolicy Cluster (as Cilium's): a
    /// backend on another node than the one that translated the packet sees a node address
    /// (source NAT in the tc program, so its replies return there); a backend on that node
    /// sees the requester's own address (its replies pass that node anyway). The translating
    /// node is the one the destination address belongs to, or is routed to by a client route.
    NodeUnlessLocal,
}

/// What the attempts of one check must show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every attempt is answered, only by these echo servers (`<pod>:<port>`, e.g.
    /// `node1-pod2:8080`), and each of them answers at least once.
    Backends(Vec<String>),
    /// Every attempt is answered by the same one of these echo servers.
    Sticky(Vec<String>),
    /// Every attempt fails fast with an active rejection (RST, ICMP unreachable, EPERM from a
    /// socket program): the probe reports `refused`, not `timeout`.
    Refused,
    /// Every attempt times out: the traffic is dropped.
    Dropped,
    /// No attempt is answered; refused and timed out are both fine. For addresses that are no
    /// service at all (where the packet goes depends on the node's routes, not the proxy).
    NoAnswer,
}

impl Outcome {
    /// Whether this outcome needs answers (and so can serve as a readiness condition).
    pub fn is_positive(&self) -> bool {
        matches!(self, Outcome::Backends(_) | Outcome::Sticky(_))
    }
}

/// Default attempts per check when a scenario does not say.
pub fn default_attempts(outcome: &Outcome) -> usize {
    match outcome {
        // Enough that a uniformly random pick misses one of k backends with probability
        // k * (1 - 1/k)^(12k + 4): below 2e-6 for k <= 4.
        Outcome::Backends(set) => 12 * set.len() + 4,
        Outcome::Sticky(_) => 20,
        Outcome::Refused => 3,
        Outcome::Dropped | Outcome::NoAnswer => 1,
    }
}

/// One probe run: `attempts` requests, each on a new socket, and what they must show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Where the requests come from.
    pub from: At,
    /// TCP or UDP.
    pub proto: Proto,
    /// Destination.
    pub to: SocketAddr,
    /// UDP only: `sendto`/`recvfrom` on an unconnected socket; the reply must then also come
    /// from `to` (reverse NAT).
    pub unconnected: bool,
    /// IPv6 only: every packet behind a destination options extension header.
    pub dest_options: bool,
    /// UDP only: requests and answers padded to this many bytes (0: plain), so that they are
    /// fragmented on the testbed's 1500-byte links.
    pub size: u16,
    /// Number of attempts; `None` uses [`default_attempts`].
    pub attempts: Option<usize>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// What the attempts must show, per mode.
    pub outcome: ByMode<Outcome>,
    /// The client address answered attempts must have been seen with, per mode (`None`: not
    /// checked).
    pub source: Option<ByMode<Source>>,
}

/// Per-attempt timeout of checks unless a scenario says otherwise.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);

impl Check {
    /// A check from `from` to `to` (`"ip:port"`) that expects nothing yet.
    pub fn new(from: At, proto: Proto, to: &str) -> Check {
        Check {
            from,
            proto,
            to: to
                .parse()
                .unwrap_or_else(|e| panic!("scenario table: bad address {to:?}: {e}")),
            unconnected: false,
            dest_options: false,
            size: 0,
            attempts: None,
            timeout: ATTEMPT_TIMEOUT,
            outcome: ByMode::both(Outcome::NoAnswer),
            source: None,
        }
    }

    /// Expects [`Outcome::Backends`] in both modes.
    pub fn answers(mut self, backends: &[&str]) -> Check {
        self.outcome = ByMode::both(Outcome::Backends(names(backends)));
        self
    }

    /// Expects [`Outcome::Sticky`] in both modes.
    pub fn sticks_to_one_of(mut self, backends: &[&str]) -> Check {
        self.outcome = ByMode::both(Outcome::Sticky(names(backends)));
        self
    }

    /// Expects [`Outcome::Refused`] in both modes.
    pub fn refused(mut self) -> Check {
        self.outcome = ByMode::both(Outcome::Refused);
        self
    }

    /// Expects [`Outcome::Dropped`] in both modes.
    pub fn dropped(mut self) -> Check {
        self.outcome = ByMode::both(Outcome::Dropped);
        self
    }

    /// Expects [`Outcome::NoAnswer`] in both modes.
    pub fn no_answer(mut self) -> Check {
        self.outcome = ByMode::both(Outcome::NoAnswer);
        self
    }

    /// Expects different outcomes per mode (for a difference the README lists).
    pub fn outcome_by_mode(mut self, iptables: Outcome, ebpf: Outcome) -> Check {
        self.outcome = ByMode { iptables, ebpf };
        self
    }

    /// Backends must see this source in both modes.
    pub fn source(mut self, source: Source) -> Check {
        self.source = Some(ByMode::both(source));
        self
    }

    /// Backends must see these sources (iptables, ebpf).
    pub fn source_by_mode(mut self, iptables: Source, ebpf: Source) -> Check {
        self.source = Some(ByMode { iptables, ebpf });
        self
    }

    /// Uses an unconnected UDP socket.
    pub fn unconnected(mut self) -> Check {
        self.unconnected = true;
        self
    }

    /// Sends every packet behind an IPv6 destination options header.
    pub fn dest_options(mut self) -> Check {
        self.dest_options = true;
        self
    }

    /// Pads the UDP requests and their answers to `size` bytes.
    pub fn size(mut self, size: u16) -> Check {
        self.size = size;
        self
    }

    /// Sets the number of attempts.
    pub fn attempts(mut self, n: usize) -> Check {
        self.attempts = Some(n);
        self
    }

    /// The number of attempts this check makes in `mode`.
    pub fn attempts_in(&self, mode: Mode) -> usize {
        self.attempts
            .unwrap_or_else(|| default_attempts(self.outcome.get(mode)))
    }

    /// One-line description for messages.
    pub fn describe(&self, mode: Mode) -> String {
        format!(
            "{} {}{}{}{} -> {} x{}: expect {:?}{}",
            self.from,
            self.proto,
            if self.unconnected {
                " (unconnected)"
            } else {
                ""
            },
            if self.dest_options {
                " (destination options)"
            } else {
                ""
            },
            if self.size > 0 {
                format!(" ({} bytes)", self.size)
            } else {
                String::new()
            },
            self.to,
            self.attempts_in(mode),
            self.outcome.get(mode),
            match &self.source {
                Some(s) => format!(", source {:?}", s.get(mode)),
                None => String::new(),
            }
        )
    }
}

fn names(backends: &[&str]) -> Vec<String> {
    backends.iter().map(|s| s.to_string()).collect()
}

/// A TCP check.
pub fn tcp(from: At, to: &str) -> Check {
    Check::new(from, Proto::Tcp, to)
}

/// A (connected, unless `.unconnected()`) UDP check.
pub fn udp(from: At, to: &str) -> Check {
    Check::new(from, Proto::Udp, to)
}

/// An SCTP check: one INIT per attempt, answered by an INIT ACK naming the backend.
pub fn sctp(from: At, to: &str) -> Check {
    Check::new(from, Proto::Sctp, to)
}

/// A change to the manifest directory (through the API: the matching applies and deletes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileEdit {
    /// Write or replace a file (atomically).
    Write(&'static str, String),
    /// Remove a file.
    Remove(&'static str),
}

/// One step of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Runs once and must pass. The first step of every scenario is a positive check; the
    /// runner polls it until it passes, as the "switchyard has programmed" condition.
    Check(Check),
    /// Edits the manifests, then polls until every `until` check passes at once. Every
    /// `steady` check runs on every poll and must pass every time: traffic that must keep
    /// working while the edit is taken up.
    Edit {
        /// What to change.
        edits: Vec<FileEdit>,
        /// Conditions that show the edit has taken effect.
        until: Vec<Check>,
        /// Checks that must never fail meanwhile.
        steady: Vec<Check>,
    },
    /// Session affinity expiry: learns the backend `from` is stuck to, then repeatedly waits
    /// `timeout` plus a margin (the one place a fixed sleep is right) and makes one request,
    /// until another backend answers; fails after `rounds` rounds.
    AffinityExpires {
        /// The check whose single attempts are made (its outcome is not used).
        check: Check,
        /// The service's `timeoutSeconds`.
        timeout: Duration,
        /// Bounded number of expiry rounds.
        rounds: usize,
    },
    /// Starts a held flow that runs in the background for the rest of the scenario, and
    /// waits for its first round trip, which must pass the flow's check.
    Hold(Flow),
    /// What a held flow must have shown by now.
    Held {
        /// The [`Flow::name`] of a flow an earlier step started.
        flow: &'static str,
        /// The expectation.
        expect: Held,
    },
}

/// Time between two round trips of a held flow.
pub const HOLD_INTERVAL: Duration = Duration::from_millis(100);

/// Longest a kept flow may go between two answers: a few intervals (its replies time out
/// after a second, and a timeout is an error anyway).
pub const HOLD_MAX_GAP: Duration = Duration::from_millis(500);

/// Round trips a moved flow must make on its new backend before [`Held::Moved`] passes.
pub const HOLD_SETTLE: usize = 5;

/// A long-lived flow: ONE socket (a TCP connection or a connected UDP socket) for the rest
/// of the scenario, one round trip every [`HOLD_INTERVAL`], started by [`Step::Hold`] and
/// judged by [`Step::Held`] steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Unique within the scenario; what [`Step::Held`] names.
    pub name: &'static str,
    /// Place, protocol and destination (never `unconnected`); its outcome (answered by one
    /// of these backends) and source apply to the first round trip. Attempts are unused.
    pub check: Check,
}

/// What a held flow must have shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// Since it started (or last moved), every round trip was answered, by the same backend
    /// and seen with the same source address, with no gap over [`HOLD_MAX_GAP`] between
    /// answers; and it still answers (one more round trip is awaited).
    Kept,
    /// Within `within` of the latest edit it is answered by one of `backends`, and then by
    /// that one only, [`HOLD_SETTLE`] times in a row. Before the move only its old backend
    /// may answer; failures are allowed (the flow may be black-holed or refused meanwhile).
    Moved {
        /// Where it must go.
        backends: Vec<String>,
        /// Bound on the time from the latest edit to the first answer from there.
        within: Duration,
    },
}

impl Step {
    /// Short description for messages.
    pub fn describe(&self, mode: Mode) -> String {
        match self {
            Step::Check(c) => format!("check {}", c.describe(mode)),
            Step::Edit { edits, .. } => format!(
                "edit {}",
                edits
                    .iter()
                    .map(|e| match e {
                        FileEdit::Write(name, _) => format!("write {name}"),
                        FileEdit::Remove(name) => format!("remove {name}"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Step::AffinityExpires {
                check,
                timeout,
                rounds,
            } => format!(
                "affinity of {} {} -> {} expires after {timeout:?} (within {rounds} rounds)",
                check.from, check.proto, check.to
            ),
            Step::Hold(flow) => format!("hold flow {}: {}", flow.name, flow.check.describe(mode)),
            Step::Held {
                flow,
                expect: Held::Kept,
            } => format!("held flow {flow} kept its backend"),
            Step::Held {
                flow,
                expect: Held::Moved { backends, within },
            } => format!("held flow {flow} moved to one of {backends:?} within {within:?}"),
        }
    }
}

/// Shorthand for [`Step::Check`].
pub fn check(c: Check) -> Step {
    Step::Check(c)
}

/// Shorthand for an [`Step::Edit`] with no steady checks.
pub fn edit(edits: Vec<FileEdit>, until: Vec<Check>) -> Step {
    Step::Edit {
        edits,
        until,
        steady: Vec::new(),
    }
}

/// Shorthand for [`Step::Edit`] with steady checks.
pub fn edit_steady(edits: Vec<FileEdit>, until: Vec<Check>, steady: Vec<Check>) -> Step {
    Step::Edit {
        edits,
        until,
        steady,
    }
}

/// Starts held flow `name` with `check` (see [`Flow`]).
pub fn hold(name: &'static str, check: Check) -> Step {
    Step::Hold(Flow { name, check })
}

/// Held flow `name` kept answering, unchanged ([`Held::Kept`]).
pub fn kept(name: &'static str) -> Step {
    Step::Held {
        flow: name,
        expect: Held::Kept,
    }
}

/// Held flow `name` moves to one of `backends` within `within` of the latest edit
/// ([`Held::Moved`]).
pub fn moves_to(name: &'static str, backends: &[&str], within: Duration) -> Step {
    Step::Held {
        flow: name,
        expect: Held::Moved {
            backends: names(backends),
            within,
        },
    }
}

/// Shorthand for [`FileEdit::Write`].
pub fn write(name: &'static str, yaml: &str) -> FileEdit {
    FileEdit::Write(name, yaml.to_owned())
}

/// Shorthand for [`FileEdit::Remove`].
pub fn remove(name: &'static str) -> FileEdit {
    FileEdit::Remove(name)
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Unique, kebab-case; what failures and `SWY_SCENARIOS` name.
    pub name: &'static str,
    /// Whether it runs in ebpf mode yet (it always runs in iptables mode).
    pub ebpf: Ebpf,
    /// Pods per node (nodes: always 2). Every pod runs echo servers on [`ECHO_PORTS`].
    pub pods_per_node: usize,
    /// Nodes that run switchyard (1-based).
    pub proxies: Vec<usize>,
    /// Extra switchyard flags, on every proxied node.
    pub flags: Vec<&'static str>,
    /// Routes the external client gets: (CIDR, node index). It only reaches node addresses
    /// otherwise; this is how external and LoadBalancer IPs are routed to a node.
    pub client_routes: Vec<(&'static str, usize)>,
    /// Manifest files (name, YAML). `nodes.yaml` with both Nodes is always added.
    pub manifests: Vec<(&'static str, String)>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// Ports every pod's echo servers listen on, each for TCP, UDP and SCTP (INITs, over a raw
/// socket); the server on port P of pod X answers with the name `X:P`.
pub const ECHO_PORTS: [u16; 2] = [8080, 9090];

/// Nodes in every testbed.
pub const NODES: usize = 2;

impl Scenario {
    /// A scenario with the defaults: 2 pods per node, switchyard on both nodes, no flags,
    /// ebpf enabled.
    pub fn new(name: &'static str) -> Scenario {
        Scenario {
            name,
            ebpf: Ebpf::Enabled,
            pods_per_node: 2,
            proxies: vec![1, 2],
            flags: Vec::new(),
            client_routes: Vec::new(),
            manifests: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// Marks it `iptables only (ebpf: reason)`. No scenario needs it today; it stays as the
    /// table's way to mark one the eBPF dataplane cannot pass yet.
    #[allow(dead_code)]
    pub fn iptables_only(mut self, reason: &'static str) -> Scenario {
        self.ebpf = Ebpf::IptablesOnly(reason);
        self
    }

    /// Sets the pods per node (each runs echo servers).
    pub fn pods(mut self, n: usize) -> Scenario {
        self.pods_per_node = n;
        self
    }

    /// Adds a manifest file.
    pub fn manifest(mut self, name: &'static str, yaml: &str) -> Scenario {
        self.manifests.push((name, yaml.to_owned()));
        self
    }

    /// Adds switchyard flags.
    pub fn flags(mut self, flags: &[&'static str]) -> Scenario {
        self.flags.extend_from_slice(flags);
        self
    }

    /// Routes `cidr` from the external client via node `node`.
    pub fn client_route(mut self, cidr: &'static str, node: usize) -> Scenario {
        self.client_routes.push((cidr, node));
        self
    }

    /// Sets the steps.
    pub fn steps(mut self, steps: Vec<Step>) -> Scenario {
        self.steps = steps;
        self
    }

    /// Whether it runs in `mode` (`pending`: also the iptables-only ones in ebpf mode).
    pub fn runs_in(&self, mode: Mode, pending: bool) -> bool {
        match (mode, &self.ebpf) {
            (Mode::Iptables | Mode::IptablesLegacy, _) | (Mode::Ebpf, Ebpf::Enabled) => true,
            (Mode::Ebpf, Ebpf::IptablesOnly(_)) => pending,
        }
    }
}
