//! When ebpf mode's packet-path flows end: the decision behind the userspace pass over
//! `SWY_CONNTRACK`, as a pure function of what the map holds and the time.
//!
//! The tc programs keep two entries per translated flow, one per direction, and record on
//! each what its direction saw (`CT_STATE_*`: answered, FIN, RST) and when it last saw a
//! packet. Nothing in the kernel expires them (LRU eviction under pressure aside), so once per
//! verify the dataplane reads the map in one pass and deletes, both directions together:
//! - flows idle for longer than their state allows, with netfilter's timeouts
//!   ([`FlowTimeouts`], read from the node's `nf_conntrack_*` sysctls, which the `conntrack`
//!   section sets as in kube-proxy): a closed or reset TCP connection goes after
//!   `time_wait` / `close`, an established one after `established`, UDP after `udp` or, once
//!   answered, `udp_stream`;
//! - UDP flows to backends that left the service (any sync that removes endpoints), so a
//!   UDP client that keeps its source port is not stuck on a dead backend (kube-proxy deletes
//!   UDP conntrack entries likewise). TCP flows are left to end or time out, as upstream
//!   leaves TCP conntrack entries alone (`pkg/proxy/conntrack/cleanup.go`): a connection in
//!   progress to an endpoint just taken out of the slice, whose pod still answers, must not
//!   break (endpoint churn broke one such NodePort connection in a few runs);
//! - an entry whose other direction is gone (evicted): it can no longer translate its flow
//!   both ways, so it gets the short timeout of an unanswered flow.
//!
//! The idle time of a flow is measured from the later of its two entries' last packets, so a
//! direction that is quiet (a download's requests, a one-way UDP stream's replies) does not
//! end a flow the other direction keeps busy.
use std::collections::BTreeSet;
use std::time::Duration;

use std::hash::Hash;

use switchyard_common::{
    Backend, Backend6, CtKey, CtKey6, CtValue, CtValue6, CT_FLAG_REPLY, CT_FLAG_SNAT, CT_STATE_FIN,
    CT_STATE_RST, CT_STATE_SEEN, PROTO_TCP, PROTO_UDP,
};

/// What the decisions read of a conntrack value of either family (`SWY_CONNTRACK`'s
/// [`CtValue`], `SWY_CONNTRACK6`'s [`CtValue6`]).
pub trait CtTimes {
    /// `CT_STATE_*` bits.
    fn state(&self) -> u16;
    /// Last packet, `CLOCK_MONOTONIC` nanoseconds.
    fn last_seen_ns(&self) -> u64;
}

/// An address and port.
pub type End<A> = (A, u16);
/// A key's source, destination and protocol.
pub type Parts<A> = (End<A>, End<A>, u8);
/// A value's flags, rewrite target and source NAT pair.
pub type Target<A> = (u16, End<A>, End<A>);

/// One family's conntrack map: key and value types and the fields the sweep compares.
pub trait CtFamily {
    /// Map key.
    type Key: Copy + Eq + Hash;
    /// Map value.
    type Value: Copy + CtTimes;
    /// An address as the map stores it.
    type Addr: Copy + Eq + Ord;
    /// A backend of this family.
    type Backend: Ord;
    /// Source, destination and protocol of a key.
    fn parts(key: &Self::Key) -> Parts<Self::Addr>;
    /// The key of these parts.
    fn key(src: End<Self::Addr>, dst: End<Self::Addr>, proto: u8) -> Self::Key;
    /// Flags, the rewrite target and the source NAT pair of a value.
    fn target(value: &Self::Value) -> Target<Self::Addr>;
    /// The backend at an address and port.
    fn backend(end: End<Self::Addr>) -> Self::Backend;
}

/// `SWY_CONNTRACK`.
pub struct V4;
/// `SWY_CONNTRACK6`.
pub struct V6;

/// The two families' maps have the same fields, with other address types.
macro_rules! ct_family {
    ($family:ty, $key:ident, $value:ident, $addr:ty, $backend:ident) => {
        impl CtTimes for $value {
            fn state(&self) -> u16 {
                self.state
            }
            fn last_seen_ns(&self) -> u64 {
                self.last_seen_ns
            }
        }

        impl CtFamily for $family {
            type Key = $key;
            type Value = $value;
            type Addr = $addr;
            type Backend = $backend;
            fn parts(k: &$key) -> Parts<$addr> {
                ((k.src_addr, k.src_port), (k.dst_addr, k.dst_port), k.proto)
            }
            fn key(src: End<$addr>, dst: End<$addr>, proto: u8) -> $key {
                $key {
                    src_addr: src.0,
                    dst_addr: dst.0,
                    src_port: src.1,
                    dst_port: dst.1,
                    proto,
                    pad: [0; 3],
                }
            }
            fn target(v: &$value) -> Target<$addr> {
                (v.flags, (v.addr, v.port), (v.nat_addr, v.nat_port))
            }
            fn backend((addr, port): End<$addr>) -> $backend {
                $backend { addr, port, pad: 0 }
            }
        }
    };
}

ct_family!(V4, CtKey, CtValue, u32, Backend);
ct_family!(V6, CtKey6, CtValue6, [u32; 4], Backend6);

/// Idle timeouts by flow state, named and defaulted as netfilter's `nf_conntrack_*_timeout*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// A TCP flow that has not been answered (`tcp_timeout_syn_sent`, 120 s).
    pub tcp_syn_sent: Duration,
    /// An answered TCP flow (`tcp_timeout_established`, 5 days; kube-proxy sets 24 h).
    pub tcp_established: Duration,
    /// The client has sent FIN (`tcp_timeout_fin_wait`, 120 s).
    pub tcp_fin_wait: Duration,
    /// The backend has sent FIN (`tcp_timeout_close_wait`, 60 s; kube-proxy sets 1 h).
    pub tcp_close_wait: Duration,
    /// Both sides have sent FIN (`tcp_timeout_time_wait`, 120 s).
    pub tcp_time_wait: Duration,
    /// Either side has sent RST (`tcp_timeout_close`, 10 s).
    pub tcp_close: Duration,
    /// UDP not answered (`udp_timeout`, 30 s).
    pub udp: Duration,
    /// UDP answered (`udp_timeout_stream`, 120 s).
    pub udp_stream: Duration,
}

impl Default for FlowTimeouts {
    /// netfilter's defaults.
    fn default() -> Self {
        Self {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_established: Duration::from_secs(5 * 24 * 3600),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_close_wait: Duration::from_secs(60),
            tcp_time_wait: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_stream: Duration::from_secs(120),
        }
    }
}

/// The `/proc/sys/net/netfilter` names of the [`FlowTimeouts`] fields, in their order.
pub const NETFILTER_SYSCTLS: [&str; 8] = [
    "nf_conntrack_tcp_timeout_syn_sent",
    "nf_conntrack_tcp_timeout_established",
    "nf_conntrack_tcp_timeout_fin_wait",
    "nf_conntrack_tcp_timeout_close_wait",
    "nf_conntrack_tcp_timeout_time_wait",
    "nf_conntrack_tcp_timeout_close",
    "nf_conntrack_udp_timeout",
    "nf_conntrack_udp_timeout_stream",
];

impl FlowTimeouts {
    /// The timeouts netfilter has: `seconds(name)` gives a sysctl of [`NETFILTER_SYSCTLS`]
    /// in seconds, `None` (not loaded, unreadable) keeps netfilter's default for it.
    pub fn from_netfilter(mut seconds: impl FnMut(&str) -> Option<u64>) -> Self {
        let defaults = Self::default();
        let mut values = [
            defaults.tcp_syn_sent,
            defaults.tcp_established,
            defaults.tcp_fin_wait,
            defaults.tcp_close_wait,
            defaults.tcp_time_wait,
            defaults.tcp_close,
            defaults.udp,
            defaults.udp_stream,
        ];
        for (value, name) in values.iter_mut().zip(NETFILTER_SYSCTLS) {
            if let Some(secs) = seconds(name) {
                *value = Duration::from_secs(secs);
            }
        }
        let [tcp_syn_sent, tcp_established, tcp_fin_wait, tcp_close_wait, tcp_time_wait, tcp_close, udp, udp_stream] =
            values;
        Self {
            tcp_syn_sent,
            tcp_established,
            tcp_fin_wait,
            tcp_close_wait,
            tcp_time_wait,
            tcp_close,
            udp,
            udp_stream,
        }
    }

    /// How long a flow in `state` may stay idle.
    pub fn of(&self, state: FlowState) -> Duration {
        match state {
            FlowState::Unanswered => self.tcp_syn_sent,
            FlowState::Established => self.tcp_established,
            FlowState::ClientClosed => self.tcp_fin_wait,
            FlowState::BackendClosed => self.tcp_close_wait,
            FlowState::Closed => self.tcp_time_wait,
            FlowState::Reset => self.tcp_close,
            FlowState::UdpUnanswered => self.udp,
            FlowState::UdpAnswered => self.udp_stream,
        }
    }
}

/// What a flow has come to, from both directions' state bits (netfilter's states, coarser).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// TCP, nothing came back yet (or the other direction's entry is gone).
    Unanswered,
    /// TCP, answered and open.
    Established,
    /// TCP, the client has closed its side.
    ClientClosed,
    /// TCP, the backend has closed its side.
    BackendClosed,
    /// TCP, both sides have closed.
    Closed,
    /// TCP, reset by either side.
    Reset,
    /// UDP, nothing came back yet.
    UdpUnanswered,
    /// UDP, answered.
    UdpAnswered,
}

/// The state of a flow of protocol `proto` from its original (`forward`) and reply entries;
/// a missing one counts as never answered.
pub fn flow_state<V: CtTimes>(proto: u8, forward: Option<&V>, reply: Option<&V>) -> FlowState {
    let bits = |entry: Option<&V>| entry.map_or(0, CtTimes::state);
    let (sent, answered) = (bits(forward), bits(reply));
    let answered_at_all = forward.is_some() && answered & CT_STATE_SEEN != 0;
    if proto != PROTO_TCP {
        return if answered_at_all {
            FlowState::UdpAnswered
        } else {
            FlowState::UdpUnanswered
        };
    }
    if (sent | answered) & CT_STATE_RST != 0 {
        return FlowState::Reset;
    }
    match (sent & CT_STATE_FIN != 0, answered & CT_STATE_FIN != 0) {
        (true, true) => FlowState::Closed,
        (true, false) => FlowState::ClientClosed,
        (false, true) => FlowState::BackendClosed,
        (false, false) if answered_at_all => FlowState::Established,
        (false, false) => FlowState::Unanswered,
    }
}

/// Whether a flow has been idle at `now_ns` (the programs' clock, `CLOCK_MONOTONIC`) for
/// longer than its state allows.
pub fn expired<V: CtTimes>(
    proto: u8,
    forward: Option<&V>,
    reply: Option<&V>,
    now_ns: u64,
    timeouts: &FlowTimeouts,
) -> bool {
    let last_seen = forward
        .into_iter()
        .chain(reply)
        .map(CtTimes::last_seen_ns)
        .max()
        .unwrap_or(0);
    let idle = now_ns.saturating_sub(last_seen);
    let allowed = timeouts.of(flow_state(proto, forward, reply)).as_nanos();
    u128::from(idle) > allowed
}

/// The key of the other direction's entry of the flow `key` belongs to.
pub fn partner_key(key: &CtKey, value: &CtValue) -> CtKey {
    partner_of::<V4>(key, value)
}

fn partner_of<F: CtFamily>(key: &F::Key, value: &F::Value) -> F::Key {
    let (flags, target, nat) = F::target(value);
    let (key_src, key_dst, proto) = F::parts(key);
    let reply = flags & CT_FLAG_REPLY != 0;
    let snat = flags & CT_FLAG_SNAT != 0;
    let (src, dst) = match (reply, snat) {
        // client -> frontend: backend -> client, or backend -> node:port.
        (false, false) => (target, key_src),
        (false, true) => (target, nat),
        // backend -> client or node:port: client -> frontend.
        (true, false) => (key_dst, target),
        (true, true) => (nat, target),
    };
    F::key(src, dst, proto)
}

/// The backend a flow's entry points at.
fn backend_of<F: CtFamily>(key: &F::Key, value: &F::Value) -> F::Backend {
    let (flags, target, _) = F::target(value);
    if flags & CT_FLAG_REPLY == 0 {
        F::backend(target)
    } else {
        F::backend(F::parts(key).0)
    }
}

/// What one pass deletes, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep<K = CtKey> {
    /// Entries to delete: both directions of every flow that ended.
    pub delete: Vec<K>,
    /// Flows that timed out.
    pub expired: usize,
    /// UDP flows to backends that left.
    pub to_gone_backends: usize,
}

/// Decides over everything the map holds (`entries`, as one pass read it): the flows that
/// expired at `now_ns` (with `timeouts`; `None` checks no lifetime, for syncs between
/// verifies) or are UDP flows to a backend in `gone`. A flow's two entries are judged together and
/// deleted together.
pub fn sweep(
    entries: &[(CtKey, CtValue)],
    now_ns: u64,
    timeouts: Option<&FlowTimeouts>,
    gone: &BTreeSet<Backend>,
) -> Sweep {
    sweep_family::<V4>(entries, now_ns, timeouts, gone)
}

/// [`sweep`] for either family's map (`SWY_CONNTRACK6` with [`V6`]).
pub fn sweep_family<F: CtFamily>(
    entries: &[(F::Key, F::Value)],
    now_ns: u64,
    timeouts: Option<&FlowTimeouts>,
    gone: &BTreeSet<F::Backend>,
) -> Sweep<F::Key> {
    let by_key = ByKey::<F>::new(entries);
    let mut result = Sweep {
        delete: Vec::new(),
        expired: 0,
        to_gone_backends: 0,
    };
    let mut doomed = BTreeSet::new();
    for (key, value) in entries {
        let is_reply = F::target(value).0 & CT_FLAG_REPLY != 0;
        let partner = partner_of::<F>(key, value);
        // The other direction, if it is there and names this entry back.
        let other = by_key.get(&partner).filter(|other| {
            (F::target(other).0 & CT_FLAG_REPLY != 0) != is_reply
                && partner_of::<F>(&partner, other) == *key
        });
        if is_reply && other.is_some() {
            // Judged with its original entry.
            continue;
        }
        let (forward, reply) = if is_reply {
            (None, Some(value))
        } else {
            (Some(value), other)
        };
        let proto = F::parts(key).2;
        let to_gone = proto == PROTO_UDP && gone.contains(&backend_of::<F>(key, value));
        let timed_out =
            !to_gone && timeouts.is_some_and(|t| expired(proto, forward, reply, now_ns, t));
        if !(to_gone || timed_out) {
            continue;
        }
        if to_gone {
            result.to_gone_backends += 1;
        } else {
            result.expired += 1;
        }
        doomed.insert(OrdKey::<F>(*key));
        if other.is_some() {
            doomed.insert(OrdKey::<F>(partner));
        }
    }
    result.delete = doomed.into_iter().map(|k| k.0).collect();
    result
}

/// The flows of `entries` (as one pass read them) that passed a packet, in either direction,
/// within `quiet` before `now_ns`. A handover from ebpf mode to iptables mode waits until
/// there are none before the tc programs go: a flow the programs translate breaks once they
/// are gone, and one that is quiet that long is most likely over.
pub fn recently_active(entries: &[(CtKey, CtValue)], now_ns: u64, quiet: Duration) -> usize {
    recently_active_family::<V4>(entries, now_ns, quiet)
}

/// [`recently_active`] for either family's map.
pub fn recently_active_family<F: CtFamily>(
    entries: &[(F::Key, F::Value)],
    now_ns: u64,
    quiet: Duration,
) -> usize {
    let quiet = u64::try_from(quiet.as_nanos()).unwrap_or(u64::MAX);
    let by_key = ByKey::<F>::new(entries);
    entries
        .iter()
        .filter(|(key, value)| {
            let is_reply = F::target(value).0 & CT_FLAG_REPLY != 0;
            let partner = partner_of::<F>(key, value);
            let other = by_key.get(&partner).filter(|other| {
                (F::target(other).0 & CT_FLAG_REPLY != 0) != is_reply
                    && partner_of::<F>(&partner, other) == *key
            });
            // A flow counts once: by its original entry, or by a reply entry on its own.
            if is_reply && other.is_some() {
                return false;
            }
            let last = value
                .last_seen_ns()
                .max(other.map_or(0, CtTimes::last_seen_ns));
            now_ns.saturating_sub(last) < quiet
        })
        .count()
}

/// A key ordered by its fields, so the deletions come out in a stable order.
struct OrdKey<F: CtFamily>(F::Key);

/// The entries of one read of a conntrack map, found by key through an index sorted by the
/// key's fields: 4 bytes per entry, where a hash map over a busy node's 200,000 entries
/// took about 7 MiB more of the controller's peak memory.
pub struct ByKey<'e, F: CtFamily> {
    entries: &'e [(F::Key, F::Value)],
    order: Vec<u32>,
}

impl<'e, F: CtFamily> ByKey<'e, F> {
    /// Indexes `entries` (a map's entries: at most `u32::MAX`).
    pub fn new(entries: &'e [(F::Key, F::Value)]) -> Self {
        let mut order: Vec<u32> = (0..entries.len())
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        order.sort_unstable_by_key(|&i| OrdKey::<F>(entries[i as usize].0));
        Self { entries, order }
    }

    /// The value read for `key`.
    pub fn get(&self, key: &F::Key) -> Option<&'e F::Value> {
        let wanted = OrdKey::<F>(*key);
        let at = self
            .order
            .binary_search_by(|&i| OrdKey::<F>(self.entries[i as usize].0).cmp(&wanted))
            .ok()?;
        let (found, value) = &self.entries[self.order[at] as usize];
        (found == key).then_some(value)
    }
}

impl<F: CtFamily> OrdKey<F> {
    fn fields(&self) -> (F::Addr, F::Addr, u16, u16, u8) {
        let (src, dst, proto) = F::parts(&self.0);
        (src.0, dst.0, src.1, dst.1, proto)
    }
}

impl<F: CtFamily> PartialEq for OrdKey<F> {
    fn eq(&self, other: &Self) -> bool {
        self.fields() == other.fields()
    }
}

impl<F: CtFamily> Eq for OrdKey<F> {}

impl<F: CtFamily> PartialOrd for OrdKey<F> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<F: CtFamily> Ord for OrdKey<F> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.fields().cmp(&other.fields())
    }
}

#[cfg(test)]
mod tests;
