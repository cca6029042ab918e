//! The conntrack table over ctnetlink (`NETLINK_NETFILTER`, subsystem `CTNETLINK`): one
//! dump of the IPv4 UDP entries, filtered in the kernel where it can (Linux >= 5.8 reads
//! `CTA_FILTER`; older kernels ignore it and the planner filters), and deletes of single
//! entries by their full original tuple and id.
//!
//! Every receive waits at most until the caller's deadline, so a sync never hangs on the
//! kernel. The socket is opened by the calling thread, so it sees that thread's network
//! namespace: the process's, the one iptables-restore programs too.
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla, NLA_F_NESTED, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr as NetlinkAddr};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::{TimeVal, TimeValLike};

use super::{ConntrackError, ConntrackTable, Deleted, Entry};
use crate::model::conntrack::{Flow, FlowTuple, IPPROTO_UDP};

/// `IPCTNL_MSG_CT_GET`: a listing when sent with `NLM_F_DUMP`.
const IPCTNL_MSG_CT_GET: u8 = 1;
/// `CTA_TUPLE_ORIG`: the original direction's tuple.
const CTA_TUPLE_ORIG: u16 = 1;
/// `CTA_ID`: the entry's id, so a delete never hits a newer entry with the same tuple.
const CTA_ID: u16 = 12;
/// `CTA_ZONE`: the entry's conntrack zone, needed to find it again.
const CTA_ZONE: u16 = 18;
/// `CTA_FILTER` (Linux >= 5.8): which fields of `CTA_TUPLE_ORIG` a dump must match.
const CTA_FILTER: u16 = 25;
/// `CTA_FILTER_ORIG_FLAGS` inside [`CTA_FILTER`].
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
/// Filter flag: match the layer-4 protocol number (kernel `nf_internals.h`, part of the ABI).
const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;
/// Delete requests sent in one datagram, then acknowledged before the next batch: bounds
/// what the acknowledgements need in the socket's receive buffer.
const DELETE_BATCH: usize = 128;
/// Large enough for any dump datagram (the kernel fills at most 32 KiB).
const RECEIVE_BUFFER: usize = 64 * 1024;

/// The kernel's conntrack table, one fresh socket per listing.
#[derive(Default)]
pub struct NetlinkTable {
    /// Whose entries a listing asks for (IPv4 unless made for IPv6).
    ipv6: bool,
    socket: Option<Ctnetlink>,
    /// The kernel refused `CTA_FILTER` once: list unfiltered from then on.
    unfiltered: bool,
    /// Entries of the last listing that were not UDP (none when the kernel filtered).
    non_udp: usize,
}

impl NetlinkTable {
    /// The table of one family's entries (`AF_INET6` dumps for IPv6).
    pub fn for_family(family: switchyard_model::iptables::rule_set::Family) -> Self {
        Self {
            ipv6: family == switchyard_model::iptables::rule_set::Family::Ipv6,
            ..Self::default()
        }
    }

    fn family(&self) -> NetfilterProtoFamily {
        if self.ipv6 {
            NetfilterProtoFamily::IPv6
        } else {
            NetfilterProtoFamily::IPv4
        }
    }

    /// A table that never asks the kernel to filter (what older kernels amount to).
    pub fn unfiltered() -> Self {
        Self {
            unfiltered: true,
            ..Self::default()
        }
    }

    /// How many entries of the last listing were not UDP: zero when the kernel filtered.
    pub fn last_listing_non_udp(&self) -> usize {
        self.non_udp
    }
}

impl ConntrackTable for NetlinkTable {
    fn list_udp(&mut self, deadline: Instant) -> Result<Vec<Entry>, ConntrackError> {
        // A fresh socket: one that timed out may still hold the rest of a dump.
        let mut socket = Ctnetlink::open()?;
        let family = self.family();
        let listed = if self.unfiltered {
            socket.dump(family, false, deadline)
        } else {
            match socket.dump(family, true, deadline) {
                Err(ConntrackError::Refused { source, .. })
                    if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
                {
                    tracing::info!(
                        error = %source,
                        "the kernel does not filter conntrack dumps; listing every IPv4 entry"
                    );
                    self.unfiltered = true;
                    socket = Ctnetlink::open()?;
                    socket.dump(family, false, deadline)
                }
                other => other,
            }
        };
        self.socket = Some(socket);
        let listed = listed?;
        let total = listed.len();
        let udp: Vec<Entry> = listed
            .into_iter()
            .filter(|e| e.flow.protocol == IPPROTO_UDP)
            .collect();
        self.non_udp = total - udp.len();
        Ok(udp)
    }

    fn delete(&mut self, entries: &[Entry], deadline: Instant) -> Result<Deleted, ConntrackError> {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            None => self.socket.insert(Ctnetlink::open()?),
        };
        let mut done = Deleted::default();
        for batch in entries.chunks(DELETE_BATCH) {
            socket.delete_batch(batch, deadline, &mut done)?;
        }
        Ok(done)
    }
}

/// One ctnetlink socket.
struct Ctnetlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// When the current operation started, for the timeout message.
    started: Instant,
}

impl Ctnetlink {
    fn open() -> Result<Self, ConntrackError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Open)?;
        socket.bind_auto().map_err(ConntrackError::Open)?;
        socket
            .connect(&NetlinkAddr::new(0, 0))
            .map_err(ConntrackError::Open)?;
        // Acknowledgements without a copy of the request: smaller, and all we read is the code.
        socket.set_cap_ack(true).map_err(ConntrackError::Open)?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; RECEIVE_BUFFER],
            started: Instant::now(),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Lists the entries of `family`, only UDP ones when `filtered` (and the kernel filters).
    fn dump(
        &mut self,
        family: NetfilterProtoFamily,
        filtered: bool,
        deadline: Instant,
    ) -> Result<Vec<Entry>, ConntrackError> {
        self.started = Instant::now();
        let seq = self.next_seq();
        let request = encode(
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            if filtered {
                udp_dump()
            } else {
                ConntrackMessage::Get(Vec::new())
            },
        );
        self.socket
            .send(&request, 0)
            .map_err(ConntrackError::Send)?;
        let mut entries = Vec::new();
        let mut undecodable = 0usize;
        loop {
            let n = self.recv(deadline)?;
            for message in messages(&self.buf[..n]) {
                let message = match message {
                    Ok(m) => m,
                    Err(_) => {
                        undecodable += 1;
                        continue;
                    }
                };
                if message.header.sequence_number != seq {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::Done(done) if done.code != 0 => {
                        return Err(ConntrackError::Refused {
                            request: "dump",
                            source: io::Error::from_raw_os_error(done.code.abs()),
                        })
                    }
                    NetlinkPayload::Done(_) => {
                        if undecodable > 0 {
                            tracing::warn!(undecodable, "conntrack entries that could not be read");
                        }
                        return Ok(entries);
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(ConntrackError::Refused {
                            request: "dump",
                            source: e.to_io(),
                        })
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
                        ..
                    }) => entries.extend(entry(&attributes)),
                    _ => {}
                }
            }
        }
    }

    /// Sends one delete per entry in one datagram and reads every acknowledgement.
    fn delete_batch(
        &mut self,
        batch: &[Entry],
        deadline: Instant,
        done: &mut Deleted,
    ) -> Result<(), ConntrackError> {
        self.started = Instant::now();
        let first = self.seq.wrapping_add(1);
        let mut request = Vec::new();
        for entry in batch {
            let seq = self.next_seq();
            request.extend(delete_request(entry, seq));
        }
        self.socket
            .send(&request, 0)
            .map_err(ConntrackError::Send)?;
        let mut pending = batch.len();
        while pending > 0 {
            let n = self.recv(deadline)?;
            for message in messages(&self.buf[..n]) {
                let Ok(message) = message else { continue };
                // Only answers to this batch's requests count.
                if message.header.sequence_number.wrapping_sub(first) as usize >= batch.len() {
                    continue;
                }
                let NetlinkPayload::Error(ack) = message.payload else {
                    continue;
                };
                pending = pending.saturating_sub(1);
                match ack.code {
                    None => done.deleted += 1,
                    // Expired, or replaced by a new entry (another id) since the dump.
                    Some(code) if code.get() == -libc::ENOENT => done.already_gone += 1,
                    Some(_) => {
                        done.failed += 1;
                        done.first_error.get_or_insert_with(|| ack.to_io());
                    }
                }
            }
        }
        Ok(())
    }

    /// Receives one datagram into `buf`, waiting no later than `deadline`.
    fn recv(&mut self, deadline: Instant) -> Result<usize, ConntrackError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConntrackError::Timeout(self.started.elapsed()));
            }
            // The socket's timeout is at least a microsecond: zero would mean "forever".
            let micros = i64::try_from(left.as_micros()).unwrap_or(i64::MAX).max(1);
            setsockopt(&self.socket, ReceiveTimeout, &TimeVal::microseconds(micros))
                .map_err(|e| ConntrackError::Receive(e.into()))?;
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ConntrackError::Timeout(self.started.elapsed()))
                }
                Err(e) => return Err(ConntrackError::Receive(e)),
            }
        }
    }
}

/// The messages of one datagram, each decoded on its own so one unreadable entry does not
/// hide the others.
fn messages(
    datagram: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<NetfilterMessage>, DecodeError>> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let rest = datagram.get(offset..).filter(|r| !r.is_empty())?;
        let length = match NetlinkBuffer::new_checked(rest) {
            Ok(buffer) => buffer.length() as usize,
            Err(e) => {
                // A broken header: the rest cannot be delimited.
                offset = datagram.len();
                return Some(Err(e));
            }
        };
        // Messages are 4-byte aligned in a datagram.
        offset += length.div_ceil(4) * 4;
        Some(NetlinkMessage::deserialize(&rest[..length]))
    })
}

/// One request, serialized.
fn encode(
    flags: u16,
    seq: u32,
    family: NetfilterProtoFamily,
    message: ConntrackMessage,
) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            message,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// A dump request filtered to UDP entries (the family comes from the netfilter header).
///
/// Built from raw attributes: ctnetlink parses `CTA_FILTER` strictly, so it must carry
/// `NLA_F_NESTED`, which the crate's typed attributes set only for those it knows.
fn udp_dump() -> ConntrackMessage {
    let bytes = |nla: &dyn Fn(&mut [u8]), len: usize| {
        let mut buf = vec![0; len];
        nla(&mut buf);
        buf
    };
    let proto = Tuple::Proto(vec![ProtoTuple::Protocol(Protocol::Udp)]);
    let flags = DefaultNla::new(
        CTA_FILTER_ORIG_FLAGS,
        CTA_FILTER_F_CTA_PROTO_NUM.to_ne_bytes().to_vec(),
    );
    ConntrackMessage::Other {
        message_type: IPCTNL_MSG_CT_GET,
        attributes: vec![
            DefaultNla::new(
                CTA_TUPLE_ORIG | NLA_F_NESTED,
                bytes(&|b| proto.emit(b), proto.buffer_len()),
            ),
            DefaultNla::new(
                CTA_FILTER | NLA_F_NESTED,
                bytes(&|b| flags.emit(b), flags.buffer_len()),
            ),
        ],
    }
}

/// The delete request of one entry: its whole original tuple (a delete without one would
/// flush the table), its id and its zone.
fn delete_request(entry: &Entry, seq: u32) -> Vec<u8> {
    let original = entry.flow.original;
    let family = match original.src.ip() {
        IpAddr::V4(_) => NetfilterProtoFamily::IPv4,
        IpAddr::V6(_) => NetfilterProtoFamily::IPv6,
    };
    let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(original.src.ip()),
            IPTuple::DestinationAddress(original.dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(entry.flow.protocol)),
            ProtoTuple::SourcePort(original.src.port()),
            ProtoTuple::DestinationPort(original.dst.port()),
        ]),
    ])];
    if let Some(id) = entry.id {
        attributes.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ID,
            id.to_be_bytes().to_vec(),
        )));
    }
    if let Some(zone) = entry.zone {
        attributes.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ZONE,
            zone.to_be_bytes().to_vec(),
        )));
    }
    encode(
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        ConntrackMessage::Delete(attributes),
    )
}

/// The entry a dumped message describes; `None` for one without two complete tuples (ICMP
/// has no ports, for one).
fn entry(attributes: &[ConntrackAttribute]) -> Option<Entry> {
    let (mut original, mut reply, mut id, mut zone) = (None, None, None, None);
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(t) => original = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            ConntrackAttribute::Other(nla) => match (nla.kind() & NLA_TYPE_MASK, value(nla)) {
                (CTA_ID, v) => id = <[u8; 4]>::try_from(v).ok().map(u32::from_be_bytes),
                (CTA_ZONE, v) => zone = <[u8; 2]>::try_from(v).ok().map(u16::from_be_bytes),
                _ => {}
            },
            _ => {}
        }
    }
    let (protocol, original) = original?;
    let (_, reply) = reply?;
    Some(Entry {
        flow: Flow {
            protocol,
            original,
            reply,
        },
        id,
        zone,
    })
}

/// An attribute's value bytes.
fn value(nla: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

/// Protocol number and addresses of one `CTA_TUPLE_*`.
fn tuple(parts: &[Tuple]) -> Option<(u8, FlowTuple)> {
    let (mut src, mut dst, mut protocol, mut sport, mut dport) = (None, None, None, None, None);
    for part in parts {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(fields) => {
                for field in fields {
                    match field {
                        ProtoTuple::Protocol(p) => protocol = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        protocol?,
        FlowTuple {
            src: SocketAddr::new(src?, sport?),
            dst: SocketAddr::new(dst?, dport?),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            flow: Flow {
                protocol: IPPROTO_UDP,
                original: FlowTuple {
                    src: "192.0.2.1:40000".parse().unwrap(),
                    dst: "198.18.128.10:53".parse().unwrap(),
                },
                reply: FlowTuple {
                    src: "198.19.1.11:9090".parse().unwrap(),
                    dst: "192.0.2.1:40000".parse().unwrap(),
                },
            },
            id: Some(0x0102_0304),
            zone: Some(7),
        }
    }

    #[test]
    fn a_delete_names_the_whole_original_tuple_the_id_and_the_zone() {
        let bytes = delete_request(&sample(), 9);
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes).unwrap();
        assert_eq!(message.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(message.header.sequence_number, 9);
        // IPCTNL_MSG_CT_DELETE of subsystem CTNETLINK.
        assert_eq!(message.header.message_type, (1 << 8) | 2);
        let NetlinkPayload::InnerMessage(inner) = message.payload else {
            panic!("not a netfilter message: {:?}", message.payload)
        };
        assert_eq!(inner.header.family, NetfilterProtoFamily::IPv4);
        let NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(attributes)) = inner.inner
        else {
            panic!("not a delete: {:?}", inner.inner)
        };
        // The same reader as for dumps finds the tuple, id and zone again (it ignores the
        // missing reply tuple only because it is handed one here).
        let mut with_reply = attributes.clone();
        with_reply.push(ConntrackAttribute::CtaTupleReply(vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress("198.19.1.11".parse().unwrap()),
                IPTuple::DestinationAddress("192.0.2.1".parse().unwrap()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Udp),
                ProtoTuple::SourcePort(9090),
                ProtoTuple::DestinationPort(40000),
            ]),
        ]));
        let read = entry(&with_reply).unwrap();
        assert_eq!(read.flow, sample().flow);
        assert_eq!((read.id, read.zone), (Some(0x0102_0304), Some(7)));
        // Without the reply tuple nothing is read: a dump entry needs both.
        assert!(entry(&attributes).is_none());
    }

    #[test]
    fn the_dump_filter_asks_for_udp_in_the_original_direction() {
        let bytes = encode(
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            NetfilterProtoFamily::IPv4,
            udp_dump(),
        );
        // IPCTNL_MSG_CT_GET of subsystem CTNETLINK.
        assert_eq!(&bytes[4..6], ((1u16 << 8) | 1).to_ne_bytes());
        // CTA_FILTER, nested, holding CTA_FILTER_ORIG_FLAGS = PROTO_NUM in host order.
        let mut filter = vec![12u8, 0];
        filter.extend((CTA_FILTER | NLA_F_NESTED).to_ne_bytes());
        filter.extend([8, 0]);
        filter.extend(CTA_FILTER_ORIG_FLAGS.to_ne_bytes());
        filter.extend(CTA_FILTER_F_CTA_PROTO_NUM.to_ne_bytes());
        assert!(
            bytes.windows(filter.len()).any(|w| w == filter.as_slice()),
            "{bytes:?}"
        );
        // CTA_TUPLE_ORIG > CTA_TUPLE_PROTO > CTA_PROTO_NUM = UDP, all nested.
        let mut tuple = vec![16u8, 0];
        tuple.extend((CTA_TUPLE_ORIG | NLA_F_NESTED).to_ne_bytes());
        tuple.extend([12, 0]);
        tuple.extend((2 | NLA_F_NESTED).to_ne_bytes());
        tuple.extend([5, 0, 1, 0, 17]);
        assert!(
            bytes.windows(tuple.len()).any(|w| w == tuple.as_slice()),
            "{bytes:?}"
        );
    }

    #[test]
    fn messages_of_a_datagram_are_read_one_by_one() {
        let mut datagram = delete_request(&sample(), 1);
        datagram.extend(delete_request(&sample(), 2));
        let seqs: Vec<u32> = messages(&datagram)
            .map(|m| m.unwrap().header.sequence_number)
            .collect();
        assert_eq!(seqs, [1, 2]);
        // A truncated tail is one error, not a panic or an endless loop.
        datagram.truncate(datagram.len() - 3);
        let read: Vec<bool> = messages(&datagram).map(|m| m.is_ok()).collect();
        assert_eq!(read, [true, false]);
    }
}
