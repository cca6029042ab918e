//! The few SCTP packets `swy-probe` speaks over raw IP sockets (protocol 132), since the test
//! kernel has no SCTP stack: a client's INIT, and the INIT-ACK a backend answers it with, whose
//! State Cookie carries the backend's echo line (its name and the source it saw). That is
//! enough for netfilter's SCTP conntrack and NAT (which follow INIT and INIT-ACK by their
//! verification tags and rewrite the ports and the CRC32c) and for a test to tell who answered.
//!
//! Layouts from RFC 9260: a 12-byte common header (source port, destination port,
//! verification tag, CRC32c checksum), then chunks (type, flags, length, value, padded to 4).

/// IANA protocol number of SCTP.
pub const IPPROTO_SCTP: i32 = 132;

/// Chunk type INIT.
pub const CHUNK_INIT: u8 = 1;
/// Chunk type INIT ACK.
pub const CHUNK_INIT_ACK: u8 = 2;
/// INIT ACK parameter type State Cookie.
const PARAM_STATE_COOKIE: u16 = 7;
/// Common header length.
const COMMON_LEN: usize = 12;
/// Fixed part of an INIT / INIT ACK chunk (header + tag, a_rwnd, streams, initial TSN).
const INIT_LEN: usize = 20;

/// SCTP's checksum (CRC32c, RFC 9260 appendix A).
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// One parsed INIT or INIT ACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The common header's verification tag (0 in an INIT).
    pub vtag: u32,
    /// [`CHUNK_INIT`] or [`CHUNK_INIT_ACK`].
    pub chunk: u8,
    /// The sender's Initiate Tag.
    pub initiate_tag: u32,
    /// The State Cookie of an INIT ACK.
    pub cookie: Option<Vec<u8>>,
}

/// The checksum of `packet` (its checksum field taken as zero).
fn checksum(packet: &[u8]) -> u32 {
    let mut digest = CRC32C.digest();
    digest.update(&packet[..8]);
    digest.update(&[0; 4]);
    digest.update(&packet[COMMON_LEN..]);
    digest.finalize()
}

/// Header, one INIT-shaped chunk of type `chunk` with `params`, checksum.
fn build(src_port: u16, dst_port: u16, vtag: u32, chunk: u8, tag: u32, params: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(COMMON_LEN + INIT_LEN + params.len());
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(chunk);
    p.push(0);
    let len = u16::try_from(INIT_LEN + params.len()).unwrap_or(u16::MAX);
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    p.extend_from_slice(params);
    // The kernel stores the CRC little-endian (`sctp_compute_cksum` returns `__le32`).
    let sum = checksum(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// A client's INIT from `src_port` to `dst_port`, offering `initiate_tag`.
pub fn init(src_port: u16, dst_port: u16, initiate_tag: u32) -> Vec<u8> {
    build(src_port, dst_port, 0, CHUNK_INIT, initiate_tag, &[])
}

/// The INIT ACK answering `init` (ports swapped, tagged with its Initiate Tag), carrying
/// `cookie` as the State Cookie.
pub fn init_ack(init: &Packet, own_tag: u32, cookie: &[u8]) -> Vec<u8> {
    let mut param = Vec::with_capacity(4 + cookie.len() + 3);
    param.extend_from_slice(&PARAM_STATE_COOKIE.to_be_bytes());
    let len = u16::try_from(4 + cookie.len()).unwrap_or(u16::MAX);
    param.extend_from_slice(&len.to_be_bytes());
    param.extend_from_slice(cookie);
    while param.len() % 4 != 0 {
        param.push(0);
    }
    build(
        init.dst_port,
        init.src_port,
        init.initiate_tag,
        CHUNK_INIT_ACK,
        own_tag,
        &param,
    )
}

/// The IPv4 packet `ip` (header included, as a raw socket reads it) as (source address,
/// SCTP packet); `None` for anything shorter than its header says.
pub fn strip_ipv4(ip: &[u8]) -> Option<(std::net::Ipv4Addr, &[u8])> {
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
    Some((src.into(), ip.get(ihl..)?))
}

/// An INIT or INIT ACK with a correct checksum; `None` for anything else.
pub fn parse(packet: &[u8]) -> Option<Packet> {
    if packet.len() < COMMON_LEN + INIT_LEN {
        return None;
    }
    let u16_at = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
    let u32_at =
        |i: usize| u32::from_be_bytes([packet[i], packet[i + 1], packet[i + 2], packet[i + 3]]);
    let stored = u32::from_le_bytes([packet[8], packet[9], packet[10], packet[11]]);
    if stored != checksum(packet) {
        return None;
    }
    let chunk = packet[COMMON_LEN];
    if chunk != CHUNK_INIT && chunk != CHUNK_INIT_ACK {
        return None;
    }
    let chunk_len = usize::from(u16_at(COMMON_LEN + 2));
    let end = (COMMON_LEN + chunk_len).min(packet.len());
    let mut cookie = None;
    let mut at = COMMON_LEN + INIT_LEN;
    while at + 4 <= end {
        let (kind, len) = (u16_at(at), usize::from(u16_at(at + 2)));
        if len < 4 || at + len > end {
            break;
        }
        if kind == PARAM_STATE_COOKIE {
            cookie = Some(packet[at + 4..at + len].to_vec());
        }
        at += len.div_ceil(4) * 4;
    }
    Some(Packet {
        src_port: u16_at(0),
        dst_port: u16_at(2),
        vtag: u32_at(4),
        chunk,
        initiate_tag: u32_at(COMMON_LEN + 4),
        cookie,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_and_init_ack_round_trip() {
        let init_packet = init(40000, 3868, 0xdead_beef);
        let parsed = parse(&init_packet).expect("INIT parses");
        assert_eq!(
            parsed,
            Packet {
                src_port: 40000,
                dst_port: 3868,
                vtag: 0,
                chunk: CHUNK_INIT,
                initiate_tag: 0xdead_beef,
                cookie: None,
            }
        );
        let ack = init_ack(&parsed, 7, b"node1-pod1:8080 198.19.1.11:40000\n");
        let back = parse(&ack).expect("INIT ACK parses");
        assert_eq!((back.src_port, back.dst_port), (3868, 40000));
        assert_eq!(
            (back.vtag, back.chunk, back.initiate_tag),
            (0xdead_beef, CHUNK_INIT_ACK, 7)
        );
        assert_eq!(
            back.cookie.as_deref(),
            Some(&b"node1-pod1:8080 198.19.1.11:40000\n"[..])
        );
        assert_eq!(ack.len() % 4, 0);
    }

    #[test]
    fn a_wrong_checksum_is_refused() {
        let mut packet = init(1, 2, 3);
        packet[20] ^= 1;
        assert_eq!(parse(&packet), None);
    }

    #[test]
    fn the_checksum_is_rfc_crc32c_stored_little_endian() {
        // CRC32c's check value (RFC 3720 B.4 / the catalogue's `check`).
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
        let packet = init(1, 2, 3);
        let stored = u32::from_le_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let mut zeroed = packet.clone();
        zeroed[8..12].fill(0);
        assert_eq!(stored, CRC32C.checksum(&zeroed));
    }
}
