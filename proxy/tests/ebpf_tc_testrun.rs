//! The tc (north-south) programs, run with BPF_PROG_TEST_RUN on hand-made Ethernet frames.
//!
//! Nothing is attached anywhere: each test loads its own copy of the kernel object (own maps),
//! fills the maps the way the controller would, runs `swy_tc_ingress` / `swy_tc_egress` on a
//! crafted frame and checks the verdict, the rewritten frame (checksums recomputed here,
//! independently of the kernel helpers), the skb mark and the conntrack entries.
//! Needs root (or CAP_BPF + CAP_NET_ADMIN) and the object built by `cargo xtask build`.
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader, TestRun, TestRunOptions};
use switchyard_common::{
    map_names, program_names, AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, Backend,
    Backend6, BackendKey, CtKey, CtKey6, CtValue, CtValue6, RefusalLimits, ServiceKey, ServiceKey6,
    ServiceValue, SnatConfig, SourceRangeKey, SourceRangeKey6, CT_FLAG_REPLY, CT_FLAG_SNAT,
    CT_STATE_FIN, CT_STATE_RST, CT_STATE_SEEN, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_SOCKET,
    SERVICE_FLAG_AFFINITY, SERVICE_FLAG_DROP_EMPTY, SERVICE_FLAG_MASQUERADE,
    SERVICE_FLAG_SOURCE_RANGES,
};
use switchyard_testbed::{Testbed, TopologySpec};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// Offset of `mark` in `struct __sk_buff` (after `len` and `pkt_type`).
const SKB_MARK_OFF: usize = 8;
/// Offset of `ifindex` in `struct __sk_buff`: the device the test skb is on (the kernel
/// resolves it in the calling thread's network namespace).
const SKB_IFINDEX_OFF: usize = 40;
/// Larger than `struct __sk_buff` on any kernel; the kernel requires the tail to be zero.
const SKB_CTX_LEN: usize = 256;

// Addresses: node, frontends and pods from 198.18.0.0/15, clients from 203.0.113.0/24.
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const NODE_PORT: u16 = 30080;
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
const OTHER_LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 2);
const POD_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const POD_B: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 12);
const POD_PORT: u16 = 8080;
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const FAR_CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
const CLIENT_PORT: u16 = 40001;

// ---------------------------------------------------------------------------------------------
// Frames

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4 {
    Tcp {
        flags: u8,
    },
    /// `checksum: false` sends the UDP checksum as 0 ("none").
    Udp {
        checksum: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    l4: L4,
}

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Flow {
    Flow {
        src,
        dst,
        l4: L4::Tcp { flags },
    }
}

fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), checksum: bool) -> Flow {
    Flow {
        src,
        dst,
        l4: L4::Udp { checksum },
    }
}

const PAYLOAD: &[u8] = b"switchyard test payload, odd length!!";
const ETH: usize = 14;
const L4_OFF: usize = ETH + 20;

/// Ones-complement sum of 16-bit big-endian words (odd tail padded with zero), unfolded.
fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Sum of the TCP/UDP pseudo header.
fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) -> u32 {
    sum16(&src) + sum16(&dst) + u32::from(proto) + l4_len as u32
}

/// Builds Ethernet + IPv4 (no options, DF) + TCP/UDP + payload with correct checksums.
fn frame(flow: Flow) -> Vec<u8> {
    frame_with(flow, &[], PAYLOAD)
}

/// [`frame`] with TCP `options` (a multiple of 4 bytes) and another payload.
fn frame_with(flow: Flow, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let (proto, l4_hdr_len) = match flow.l4 {
        L4::Tcp { .. } => (PROTO_TCP, 20 + options.len()),
        L4::Udp { .. } => (PROTO_UDP, 8),
    };
    let l4_len = l4_hdr_len + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // destination MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // source MAC
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&flow.src.0.octets());
    ip[16..20].copy_from_slice(&flow.dst.0.octets());
    let ip_csum = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    f.extend_from_slice(&ip);

    let mut l4 = Vec::new();
    l4.extend_from_slice(&flow.src.1.to_be_bytes());
    l4.extend_from_slice(&flow.dst.1.to_be_bytes());
    match flow.l4 {
        L4::Tcp { flags } => {
            l4.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
            let ack: u32 = if flags & TCP_ACK != 0 { 0x0a0b_0c0d } else { 0 };
            l4.extend_from_slice(&ack.to_be_bytes());
            l4.push(((20 + options.len()) as u8 / 4) << 4); // data offset in words
            l4.push(flags);
            l4.extend_from_slice(&64240u16.to_be_bytes()); // window
            l4.extend_from_slice(&[0, 0, 0, 7]); // checksum, urgent pointer
            l4.extend_from_slice(options);
        }
        L4::Udp { .. } => {
            l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]); // checksum
        }
    }
    l4.extend_from_slice(payload);
    let csum_off = if proto == PROTO_TCP { 16 } else { 6 };
    let wants_csum = !matches!(flow.l4, L4::Udp { checksum: false });
    if wants_csum {
        let sum =
            pseudo_sum(flow.src.0.octets(), flow.dst.0.octets(), proto, l4.len()) + sum16(&l4);
        let mut csum = !fold(sum);
        if proto == PROTO_UDP && csum == 0 {
            csum = 0xffff;
        }
        l4[csum_off..csum_off + 2].copy_from_slice(&csum.to_be_bytes());
    }
    f.extend_from_slice(&l4);
    f
}

/// What a test reads back out of a frame.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    l4_csum: u16,
}

fn parse(f: &[u8]) -> Parsed {
    let ip4 = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    let be16 = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    let csum_off = if f[ETH + 9] == PROTO_TCP { 16 } else { 6 };
    Parsed {
        src: (ip4(ETH + 12), be16(L4_OFF)),
        dst: (ip4(ETH + 16), be16(L4_OFF + 2)),
        l4_csum: be16(L4_OFF + csum_off),
    }
}

/// Verifies both checksums of a frame from scratch: a correct header/segment sums to 0xffff.
fn assert_checksums_valid(f: &[u8]) {
    assert_eq!(fold(sum16(&f[ETH..L4_OFF])), 0xffff, "IPv4 header checksum");
    let proto = f[ETH + 9];
    let l4 = &f[L4_OFF..];
    if proto == PROTO_UDP && parse(f).l4_csum == 0 {
        return; // no checksum: nothing to verify
    }
    let src: [u8; 4] = f[ETH + 12..ETH + 16].try_into().unwrap();
    let dst: [u8; 4] = f[ETH + 16..ETH + 20].try_into().unwrap();
    let sum = pseudo_sum(src, dst, proto, l4.len()) + sum16(l4);
    assert_eq!(fold(sum), 0xffff, "L4 checksum of proto {proto}");
}

// ---------------------------------------------------------------------------------------------
// The loaded object

fn be(addr: Ipv4Addr) -> u32 {
    u32::from(addr).to_be()
}

fn ct_key(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8) -> CtKey {
    CtKey {
        src_addr: be(src.0),
        dst_addr: be(dst.0),
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        proto,
        pad: [0; 3],
    }
}

struct Verdict {
    ret: u32,
    frame: Vec<u8>,
    mark: u32,
}

struct Tc {
    ebpf: Ebpf,
}

impl Tc {
    fn load() -> Tc {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/bpf/bpfel-unknown-none/release/switchyard-ebpf");
        let object = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the eBPF object {}: {e}; run cargo xtask build",
                path.display()
            )
        });
        // Small maps: every test has its own copy and some maps are preallocated.
        let mut loader = EbpfLoader::new();
        for name in [
            map_names::SERVICES,
            map_names::BACKENDS,
            map_names::SOCK_REVNAT,
            map_names::AFFINITY,
            map_names::CONNTRACK,
            map_names::SOURCE_RANGES,
        ] {
            loader.map_max_entries(name, 1024);
        }
        // The socket iterator's kfunc call neutralised (this test loads no iterator).
        let prepared = switchyard::ebpf::sock_term::prepare_object(&object, None);
        let mut ebpf = loader
            .load(prepared.bytes())
            .expect("load the eBPF object (needs root)");
        for name in [program_names::TC_INGRESS, program_names::TC_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name} in the object"))
                .try_into()
                .expect("a SchedClassifier");
            prog.load()
                .unwrap_or_else(|e| panic!("verifier accepts {name}: {e:?}"));
        }
        // The IPv6 programs the IPv4 ones tail-call, loaded and slotted as the controller does.
        switchyard::ebpf::tc_v6::load(&mut ebpf)
            .unwrap_or_else(|e| panic!("verifier accepts the IPv6 tc programs: {e:?}"));
        Tc { ebpf }
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(self.ebpf.map_mut(name).expect(name)).expect(name)
    }

    fn service(&mut self, addr: Ipv4Addr, port: u16, proto: u8, scope: u8, value: ServiceValue) {
        let key = ServiceKey {
            addr: be(addr),
            port: port.to_be(),
            proto,
            scope,
        };
        self.hash(map_names::SERVICES)
            .insert(key, value, 0)
            .expect("insert service");
    }

    /// One external frontend with the given backends (all slots filled) and flags.
    fn external(
        &mut self,
        frontend: (Ipv4Addr, u16),
        proto: u8,
        id: u32,
        flags: u16,
        pods: &[Ipv4Addr],
    ) {
        for (slot, pod) in pods.iter().enumerate() {
            let key = BackendKey {
                service_id: id,
                slot: slot as u32,
            };
            let backend = Backend {
                addr: be(*pod),
                port: POD_PORT.to_be(),
                pad: 0,
            };
            self.hash(map_names::BACKENDS)
                .insert(key, backend, 0)
                .expect("insert backend");
        }
        let value = ServiceValue {
            id,
            count: pods.len() as u16,
            flags,
            affinity_timeout: if flags & SERVICE_FLAG_AFFINITY != 0 {
                10_800
            } else {
                0
            },
            pad: 0,
        };
        self.service(frontend.0, frontend.1, proto, SCOPE_EXTERNAL, value);
    }

    /// Allows `client/prefix` to reach `lb`: the key's prefix is 32 (LB IP) + the range's.
    fn source_range(&mut self, lb: Ipv4Addr, client: Ipv4Addr, prefix: u32) {
        let mut trie: LpmTrie<&mut MapData, SourceRangeKey, u8> =
            LpmTrie::try_from(self.ebpf.map_mut(map_names::SOURCE_RANGES).unwrap()).unwrap();
        let key = Key::new(
            32 + prefix,
            SourceRangeKey {
                lb_addr: be(lb),
                client_addr: be(client),
            },
        );
        trie.insert(&key, 1, 0).expect("insert source range");
    }

    fn conntrack(&mut self, key: CtKey) -> Option<CtValue> {
        self.hash::<CtKey, CtValue>(map_names::CONNTRACK)
            .get(&key, 0)
            .ok()
    }

    fn conntrack_len(&mut self) -> usize {
        self.hash::<CtKey, CtValue>(map_names::CONNTRACK)
            .keys()
            .count()
    }

    fn run(&self, program: &str, input: &[u8], mark: u32) -> Verdict {
        self.run_on(program, input, mark, 0)
    }

    /// Runs `program` on `input` as if it arrived on device `ifindex` (0: loopback) of the
    /// calling thread's network namespace, whose routes `bpf_fib_lookup` then uses.
    fn run_on(&self, program: &str, input: &[u8], mark: u32, ifindex: u32) -> Verdict {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .expect("program")
            .try_into()
            .expect("a SchedClassifier");
        let mut ctx_in = [0u8; SKB_CTX_LEN];
        ctx_in[SKB_MARK_OFF..SKB_MARK_OFF + 4].copy_from_slice(&mark.to_ne_bytes());
        ctx_in[SKB_IFINDEX_OFF..SKB_IFINDEX_OFF + 4].copy_from_slice(&ifindex.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_CTX_LEN];
        let mut out = vec![0u8; input.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        assert!(
            result.ctx_size_out as usize > SKB_MARK_OFF + 4,
            "skb context returned"
        );
        let mark = u32::from_ne_bytes(ctx_out[SKB_MARK_OFF..SKB_MARK_OFF + 4].try_into().unwrap());
        Verdict {
            ret: result.return_value,
            frame: out,
            mark,
        }
    }

    /// Source NAT as the controller configures it: the port range and `device`'s address.
    fn snat(&mut self, ports: std::ops::RangeInclusive<u16>, ifindex: u32, addr: Ipv4Addr) {
        let mut config: aya::maps::Array<&mut MapData, SnatConfig> =
            aya::maps::Array::try_from(self.ebpf.map_mut(map_names::SNAT_CONFIG).unwrap()).unwrap();
        let value = SnatConfig {
            port_min: *ports.start(),
            port_max: *ports.end(),
        };
        config.set(0, value, 0).expect("write the snat config");
        self.hash::<u32, u32>(map_names::SNAT_ADDRS)
            .insert(ifindex, be(addr), 0)
            .expect("write the snat address");
    }

    /// ICMP rate limits as the controller writes them from the node's sysctls.
    fn refusal_limits(&mut self, limits: RefusalLimits) {
        let mut array: aya::maps::Array<&mut MapData, RefusalLimits> =
            aya::maps::Array::try_from(self.ebpf.map_mut(map_names::REFUSAL_LIMITS).unwrap())
                .unwrap();
        array.set(0, limits, 0).expect("write the refusal limits");
    }

    fn conntrack_entries(&mut self) -> Vec<(CtKey, CtValue)> {
        self.hash::<CtKey, CtValue>(map_names::CONNTRACK)
            .iter()
            .map(Result::unwrap)
            .collect()
    }

    fn ingress(&self, input: &[u8]) -> Verdict {
        self.run(program_names::TC_INGRESS, input, 0)
    }

    fn egress(&self, input: &[u8]) -> Verdict {
        self.run(program_names::TC_EGRESS, input, 0)
    }
}

/// The frame is passed on, byte for byte.
fn assert_untouched(v: &Verdict, input: &[u8]) {
    assert_eq!(v.ret, TC_ACT_OK, "verdict");
    assert_eq!(v.frame, input, "frame unchanged");
}

/// The frame is passed on with the destination rewritten and valid checksums.
fn assert_dnat(v: &Verdict, input: &[u8], to: (Ipv4Addr, u16)) {
    assert_eq!(v.ret, TC_ACT_OK, "verdict");
    let before = parse(input);
    let after = parse(&v.frame);
    assert_eq!(after.dst, to, "destination rewritten");
    assert_eq!(after.src, before.src, "source kept");
    assert_eq!(v.frame.len(), input.len());
    assert_eq!(v.frame[L4_OFF + 20..], input[L4_OFF + 20..], "payload kept");
    assert_checksums_valid(&v.frame);
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn tcp_syn_to_nodeport_is_translated_and_tracked_in_both_directions() {
    let mut tc = Tc::load();
    tc.external((NODE, NODE_PORT), PROTO_TCP, 7, 0, &[POD_A]);
    let client = (CLIENT, CLIENT_PORT);

    let syn = frame(tcp(client, (NODE, NODE_PORT), TCP_SYN));
    assert_checksums_valid(&syn);
    let v = tc.ingress(&syn);
    assert_dnat(&v, &syn, (POD_A, POD_PORT));
    assert_eq!(v.mark, 0, "no masquerade requested");

    let original = tc
        .conntrack(ct_key(client, (NODE, NODE_PORT), PROTO_TCP))
        .expect("original-direction entry");
    assert_eq!(
        (original.addr, original.port, original.flags),
        (be(POD_A), POD_PORT.to_be(), 0)
    );
    assert_ne!(original.last_seen_ns, 0);
    let reply = tc
        .conntrack(ct_key((POD_A, POD_PORT), client, PROTO_TCP))
        .expect("reply-direction entry");
    assert_eq!(
        (reply.addr, reply.port, reply.flags),
        (be(NODE), NODE_PORT.to_be(), CT_FLAG_REPLY)
    );
    assert_eq!(tc.conntrack_len(), 2);

    // The rest of the connection follows the entry (and refreshes it).
    let data = frame(tcp(client, (NODE, NODE_PORT), TCP_ACK | TCP_PSH));
    let v = tc.ingress(&data);
    assert_dnat(&v, &data, (POD_A, POD_PORT));
    let refreshed = tc
        .conntrack(ct_key(client, (NODE, NODE_PORT), PROTO_TCP))
        .unwrap();
    assert!(refreshed.last_seen_ns >= original.last_seen_ns);
    assert_eq!(tc.conntrack_len(), 2, "no new entries for a known flow");
}

#[test]
fn a_second_flow_with_the_same_reply_tuple_never_steals_the_first_flows_replies() {
    let mut tc = Tc::load();
    // Two frontends with the one backend: the same client address and port reaching both
    // produce the same reply 5-tuple.
    tc.external((NODE, NODE_PORT), PROTO_TCP, 7, 0, &[POD_A]);
    tc.external((LB_IP, 80), PROTO_TCP, 8, 0, &[POD_A]);
    let client = (CLIENT, CLIENT_PORT);
    let first = frame(tcp(client, (NODE, NODE_PORT), TCP_SYN));
    assert_dnat(&tc.ingress(&first), &first, (POD_A, POD_PORT));

    let second = frame(tcp(client, (LB_IP, 80), TCP_SYN));
    let v = tc.ingress(&second);
    assert_eq!(
        v.ret, TC_ACT_SHOT,
        "the colliding flow is dropped, not translated"
    );
    let reply = tc
        .conntrack(ct_key((POD_A, POD_PORT), client, PROTO_TCP))
        .expect("reply-direction entry");
    assert_eq!(
        (reply.addr, reply.port),
        (be(NODE), NODE_PORT.to_be()),
        "replies still go back as the first flow's frontend"
    );
    assert_eq!(
        tc.conntrack(ct_key(client, (LB_IP, 80), PROTO_TCP)),
        None,
        "no half-tracked second flow"
    );
    // The first flow's packets still follow it.
    let data = frame(tcp(client, (NODE, NODE_PORT), TCP_ACK | TCP_PSH));
    assert_dnat(&tc.ingress(&data), &data, (POD_A, POD_PORT));
}

#[test]
fn egress_rewrites_the_reply_source_back_to_the_frontend() {
    let mut tc = Tc::load();
    tc.external((LB_IP, 443), PROTO_TCP, 3, 0, &[POD_B]);
    let client = (CLIENT, CLIENT_PORT);
    let v = tc.ingress(&frame(tcp(client, (LB_IP, 443), TCP_SYN)));
    assert_eq!(parse(&v.frame).dst, (POD_B, POD_PORT));

    let syn_ack = frame(tcp((POD_B, POD_PORT), client, TCP_SYN | TCP_ACK));
    let v = tc.egress(&syn_ack);
    assert_eq!(v.ret, TC_ACT_OK);
    let after = parse(&v.frame);
    assert_eq!(after.src, (LB_IP, 443), "source rewritten to the frontend");
    assert_eq!(after.dst, client, "destination kept");
    assert_checksums_valid(&v.frame);

    // Traffic of other flows leaving the node is not touched: another client port, another
    // backend port, and the original direction itself.
    for other in [
        frame(tcp((POD_B, POD_PORT), (CLIENT, CLIENT_PORT + 1), TCP_ACK)),
        frame(tcp((POD_B, POD_PORT + 1), client, TCP_ACK)),
        frame(udp((POD_B, POD_PORT), client, true)),
        frame(tcp(client, (LB_IP, 443), TCP_ACK)),
    ] {
        assert_untouched(&tc.egress(&other), &other);
    }
}

#[test]
fn udp_is_translated_both_ways_with_valid_checksums() {
    let mut tc = Tc::load();
    tc.external((NODE, 30053), PROTO_UDP, 9, 0, &[POD_A]);
    let client = (CLIENT, 5353);
    let query = frame(udp(client, (NODE, 30053), true));
    assert_checksums_valid(&query);
    let v = tc.ingress(&query);
    assert_dnat(&v, &query, (POD_A, POD_PORT));
    assert_ne!(parse(&v.frame).l4_csum, 0);
    assert!(tc
        .conntrack(ct_key(client, (NODE, 30053), PROTO_UDP))
        .is_some());

    let answer = frame(udp((POD_A, POD_PORT), client, true));
    let v = tc.egress(&answer);
    assert_eq!(v.ret, TC_ACT_OK);
    assert_eq!(parse(&v.frame).src, (NODE, 30053));
    assert_checksums_valid(&v.frame);
}

#[test]
fn udp_without_checksum_keeps_a_zero_checksum() {
    let mut tc = Tc::load();
    tc.external((NODE, 30053), PROTO_UDP, 9, 0, &[POD_A]);
    let client = (CLIENT, 5353);
    let query = frame(udp(client, (NODE, 30053), false));
    assert_eq!(parse(&query).l4_csum, 0);
    let v = tc.ingress(&query);
    assert_dnat(&v, &query, (POD_A, POD_PORT));
    assert_eq!(
        parse(&v.frame).l4_csum,
        0,
        "UDP checksum stays 0 on ingress"
    );

    let answer = frame(udp((POD_A, POD_PORT), client, false));
    let v = tc.egress(&answer);
    assert_eq!(parse(&v.frame).src, (NODE, 30053));
    assert_eq!(parse(&v.frame).l4_csum, 0, "UDP checksum stays 0 on egress");
    assert_checksums_valid(&v.frame);
}

#[test]
fn tcp_without_syn_and_without_flow_passes_untouched() {
    let mut tc = Tc::load();
    tc.external((NODE, NODE_PORT), PROTO_TCP, 7, 0, &[POD_A]);
    let client = (CLIENT, CLIENT_PORT);
    for flags in [
        TCP_ACK,
        TCP_ACK | TCP_PSH,
        TCP_SYN | TCP_ACK,
        0x04, /* RST */
    ] {
        let segment = frame(tcp(client, (NODE, NODE_PORT), flags));
        assert_untouched(&tc.ingress(&segment), &segment);
    }
    assert_eq!(tc.conntrack_len(), 0, "no flow created");
}

#[test]
fn traffic_that_is_not_an_external_frontend_passes_untouched() {
    let mut tc = Tc::load();
    tc.external((NODE, NODE_PORT), PROTO_TCP, 7, 0, &[POD_A]);
    // A socket-scope entry (ClusterIP) is not an external frontend.
    tc.service(
        Ipv4Addr::new(198, 18, 128, 10),
        80,
        PROTO_TCP,
        SCOPE_SOCKET,
        ServiceValue {
            id: 8,
            count: 1,
            ..ServiceValue::default()
        },
    );
    let client = (CLIENT, CLIENT_PORT);
    let mut cases = vec![
        frame(tcp(client, (NODE, NODE_PORT + 1), TCP_SYN)), // other port
        frame(udp(client, (NODE, NODE_PORT), true)),        // other protocol
        frame(tcp(
            client,
            (Ipv4Addr::new(198, 18, 0, 11), NODE_PORT),
            TCP_SYN,
        )), // other address
        frame(tcp(client, (Ipv4Addr::new(198, 18, 128, 10), 80), TCP_SYN)), // socket scope only
    ];
    // A later fragment (offset 3) of a matching flow's datagram whose first fragment was
    // not seen: its first bytes are payload, not ports.
    let mut fragment = frame(tcp(client, (NODE, NODE_PORT), TCP_SYN));
    set_ip_fields(&mut fragment, 0x1234, 3);
    cases.push(fragment);
    // IP options (ihl 6): passed as is.
    let mut options = frame(tcp(client, (NODE, NODE_PORT), TCP_SYN));
    options[ETH] = 0x46;
    options.splice(ETH + 20..ETH + 20, [1, 1, 1, 0]);
    cases.push(options);
    // Not IPv4 at all (an ARP-sized frame with EtherType ARP).
    let mut arp = frame(tcp(client, (NODE, NODE_PORT), TCP_SYN));
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    cases.push(arp);
    // Truncated TCP headers: without the flags, and with the flags but not the checksum.
    for len in [10, 14] {
        let mut short = frame(tcp(client, (NODE, NODE_PORT), TCP_SYN));
        short.truncate(L4_OFF + len);
        cases.push(short);
    }

    for case in &cases {
        assert_untouched(&tc.ingress(case), case);
        assert_untouched(&tc.egress(case), case);
    }
    assert_eq!(tc.conntrack_len(), 0);
}

#[test]
fn source_ranges_allow_listed_clients_and_drop_the_rest() {
    let mut tc = Tc::load();
    tc.external(
        (LB_IP, 443),
        PROTO_TCP,
        4,
        SERVICE_FLAG_SOURCE_RANGES,
        &[POD_A],
    );
    tc.source_range(LB_IP, Ipv4Addr::new(203, 0, 113, 0), 28); // .0 - .15
                                                               // A range for another LoadBalancer IP must not open this one.
    tc.source_range(OTHER_LB_IP, Ipv4Addr::new(203, 0, 113, 0), 24);

    let allowed = frame(tcp((CLIENT, CLIENT_PORT), (LB_IP, 443), TCP_SYN));
    assert_dnat(&tc.ingress(&allowed), &allowed, (POD_A, POD_PORT));

    let denied = frame(tcp((FAR_CLIENT, CLIENT_PORT), (LB_IP, 443), TCP_SYN));
    let v = tc.ingress(&denied);
    assert_eq!(v.ret, TC_ACT_SHOT, "client outside the ranges is dropped");
    assert!(tc
        .conntrack(ct_key((FAR_CLIENT, CLIENT_PORT), (LB_IP, 443), PROTO_TCP))
        .is_none());
    assert_eq!(tc.conntrack_len(), 2, "only the allowed flow is tracked");

    // Widening the range lets the client in.
    tc.source_range(LB_IP, Ipv4Addr::new(203, 0, 113, 64), 26); // .64 - .127
    assert_dnat(&tc.ingress(&denied), &denied, (POD_A, POD_PORT));
}

#[test]
fn empty_services_are_refused_from_the_node_or_dropped_with_drop_empty() {
    let mut tc = Tc::load();
    tc.external((NODE, 30001), PROTO_TCP, 1, 0, &[]);
    tc.external((NODE, 30002), PROTO_TCP, 2, SERVICE_FLAG_DROP_EMPTY, &[]);
    tc.external((NODE, 30003), PROTO_UDP, 3, SERVICE_FLAG_DROP_EMPTY, &[]);
    let client = (CLIENT, CLIENT_PORT);

    let refused = frame_with(tcp(client, (NODE, 30001), TCP_SYN), &[], &[]);
    let v = tc.ingress(&refused);
    assert_eq!(v.ret, TC_ACT_REDIRECT, "answered from here");
    assert_tcp_reset(&v.frame, &refused);
    let dropped = frame(tcp(client, (NODE, 30002), TCP_SYN));
    assert_eq!(tc.ingress(&dropped).ret, TC_ACT_SHOT);
    let dropped = frame(udp(client, (NODE, 30003), true));
    assert_eq!(tc.ingress(&dropped).ret, TC_ACT_SHOT);
    assert_eq!(tc.conntrack_len(), 0);
}

#[test]
fn a_missing_backend_slot_drops_the_first_packet() {
    let mut tc = Tc::load();
    // count 1, but slot 0 not written (the controller is in the middle of a rewrite).
    tc.service(
        NODE,
        NODE_PORT,
        PROTO_TCP,
        SCOPE_EXTERNAL,
        ServiceValue {
            id: 5,
            count: 1,
            ..ServiceValue::default()
        },
    );
    let syn = frame(tcp((CLIENT, CLIENT_PORT), (NODE, NODE_PORT), TCP_SYN));
    assert_eq!(tc.ingress(&syn).ret, TC_ACT_SHOT);
    assert_eq!(tc.conntrack_len(), 0);
}

// ---------------------------------------------------------------------------------------------
// Source NAT (externalTrafficPolicy Cluster, remote backends)
//
// `bpf_fib_lookup` uses the routes of the namespace the test thread is in, so these tests run
// the programs inside node1 of a throwaway testbed (eth0 198.18.0.11, node2's pods 198.19.2.0/24
// via 198.18.0.12, node1's own pods on veths), never in the machine's namespace.

const SNAT_PORTS: std::ops::RangeInclusive<u16> = 32768..=65535;
/// The MAC address node1 is told node2 has, so a resolved neighbour's address can be checked.
const NODE2_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x12];

struct SnatBed {
    testbed: Testbed,
    node1: Ipv4Addr,
    /// node2-pod1, behind node2: a remote backend.
    remote_pod: Ipv4Addr,
    /// node1-pod1: a local backend.
    local_pod: Ipv4Addr,
    /// node1's eth0.
    ifindex: u32,
}

impl SnatBed {
    fn new() -> SnatBed {
        let testbed = Testbed::new(TopologySpec {
            nodes: 2,
            pods_per_node: 1,
        })
        .expect("testbed");
        let node = testbed.node(1);
        let mac = NODE2_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let neigh = testbed
            .run(
                node.place(),
                "ip",
                [
                    "neigh",
                    "replace",
                    &testbed.node(2).underlay_ip.to_string(),
                    "lladdr",
                    &mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ],
                std::time::Duration::from_secs(10),
            )
            .expect("ip neigh");
        assert!(neigh.status.success(), "ip neigh: {}", neigh.stderr);
        let ifindex = switchyard_testbed::netns::run_in_netns(&node.netns_path, || {
            Ok(nix::net::if_::if_nametoindex("eth0").expect("eth0 in node1"))
        })
        .expect("ifindex");
        SnatBed {
            node1: node.underlay_ip,
            remote_pod: testbed.pod(2, 1).ip,
            local_pod: testbed.pod(1, 1).ip,
            ifindex,
            testbed,
        }
    }

    /// Runs the ingress program inside node1, on eth0.
    fn ingress(&self, tc: &Tc, input: &[u8]) -> Verdict {
        let path = self.testbed.node(1).netns_path.clone();
        switchyard_testbed::netns::run_in_netns(&path, || {
            Ok(tc.run_on(program_names::TC_INGRESS, input, 0, self.ifindex))
        })
        .expect("run in node1")
    }
}

#[test]
fn masquerade_flow_to_a_remote_backend_is_source_natted_and_its_reply_rewritten_back() {
    let bed = SnatBed::new();
    let mut tc = Tc::load();
    tc.snat(SNAT_PORTS, bed.ifindex, bed.node1);
    let frontend = (bed.node1, NODE_PORT);
    tc.external(
        frontend,
        PROTO_TCP,
        7,
        SERVICE_FLAG_MASQUERADE,
        &[bed.remote_pod],
    );
    let client = (CLIENT, CLIENT_PORT);

    let syn = frame(tcp(client, frontend, TCP_SYN));
    let v = bed.ingress(&tc, &syn);
    assert_eq!(v.ret, TC_ACT_REDIRECT, "redirected out, not up the stack");
    let out = parse(&v.frame);
    assert_eq!(
        out.dst,
        (bed.remote_pod, POD_PORT),
        "destination: the backend"
    );
    assert_eq!(out.src.0, bed.node1, "source: the node address");
    let snat_port = out.src.1;
    assert!(SNAT_PORTS.contains(&snat_port), "port {snat_port} in range");
    assert_checksums_valid(&v.frame);
    assert_eq!(v.frame[..6], NODE2_MAC, "next hop's MAC");
    assert_eq!(v.frame[L4_OFF + 20..], syn[L4_OFF + 20..], "payload kept");

    let forward = tc
        .conntrack(ct_key(client, frontend, PROTO_TCP))
        .expect("original-direction entry");
    assert_eq!(
        (
            forward.addr,
            forward.port,
            forward.nat_addr,
            forward.nat_port
        ),
        (
            be(bed.remote_pod),
            POD_PORT.to_be(),
            be(bed.node1),
            snat_port.to_be()
        )
    );
    assert_eq!(forward.flags & CT_FLAG_SNAT, CT_FLAG_SNAT);
    let reply_key = ct_key(
        (bed.remote_pod, POD_PORT),
        (bed.node1, snat_port),
        PROTO_TCP,
    );
    let reply = tc.conntrack(reply_key).expect("reply-direction entry");
    assert_eq!(
        (reply.addr, reply.port, reply.nat_addr, reply.nat_port),
        (
            be(frontend.0),
            frontend.1.to_be(),
            be(client.0),
            client.1.to_be()
        )
    );
    assert_eq!(
        reply.flags & (CT_FLAG_REPLY | CT_FLAG_SNAT),
        CT_FLAG_REPLY | CT_FLAG_SNAT
    );
    assert_eq!(tc.conntrack_len(), 2);

    // The rest of the flow keeps its port.
    let data = frame(tcp(client, frontend, TCP_ACK | TCP_PSH));
    let v = bed.ingress(&tc, &data);
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    assert_eq!(parse(&v.frame).src, (bed.node1, snat_port));
    assert_checksums_valid(&v.frame);
    assert_eq!(tc.conntrack_len(), 2, "no new entries for a known flow");

    // The backend's reply arrives on ingress and leaves as frontend -> client.
    let syn_ack = frame(tcp(
        (bed.remote_pod, POD_PORT),
        (bed.node1, snat_port),
        TCP_SYN | TCP_ACK,
    ));
    let v = bed.ingress(&tc, &syn_ack);
    assert_eq!(
        v.ret, TC_ACT_REDIRECT,
        "reply redirected towards the client"
    );
    let back = parse(&v.frame);
    assert_eq!(back.src, frontend, "source: the frontend");
    assert_eq!(back.dst, client, "destination: the client");
    assert_checksums_valid(&v.frame);

    // A second client gets another port (the reply tuples must differ).
    let other = (FAR_CLIENT, CLIENT_PORT);
    let v = bed.ingress(&tc, &frame(tcp(other, frontend, TCP_SYN)));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    let second = parse(&v.frame).src;
    assert_eq!(second.0, bed.node1);
    assert_ne!(second.1, snat_port, "another flow, another port");
    assert_eq!(tc.conntrack_len(), 4);
}

/// A conntrack value of either family, whose last packet a test can move.
trait Aged: aya::Pod {
    /// The family's conntrack map.
    const MAP: &'static str;
    fn last_seen_ns(&mut self) -> &mut u64;
}

impl Aged for CtValue {
    const MAP: &'static str = map_names::CONNTRACK;
    fn last_seen_ns(&mut self) -> &mut u64 {
        &mut self.last_seen_ns
    }
}

impl Aged for CtValue6 {
    const MAP: &'static str = map_names::CONNTRACK6;
    fn last_seen_ns(&mut self) -> &mut u64 {
        &mut self.last_seen_ns
    }
}

/// Moves both entries of a tracked flow's last packet far into the past (to boot time).
fn age_flow_of<K: aya::Pod, V: Aged>(tc: &mut Tc, keys: [K; 2]) {
    let mut map = tc.hash::<K, V>(V::MAP);
    for key in keys {
        let mut value = map.get(&key, 0).expect("entry to age");
        *value.last_seen_ns() = 0;
        map.insert(key, value, 0).expect("write aged entry");
    }
}

fn age_flow(tc: &mut Tc, keys: [CtKey; 2]) {
    age_flow_of::<CtKey, CtValue>(tc, keys);
}

#[test]
fn an_ended_flows_source_nat_port_goes_to_a_new_flow_and_a_live_flows_never_does() {
    let bed = SnatBed::new();
    let mut tc = Tc::load();
    // One port: every new flow needs the one flow before it to have ended.
    const PORT: u16 = 40000;
    tc.snat(PORT..=PORT, bed.ifindex, bed.node1);
    let frontend = (bed.node1, NODE_PORT);
    tc.external(
        frontend,
        PROTO_TCP,
        7,
        SERVICE_FLAG_MASQUERADE,
        &[bed.remote_pod],
    );
    let first = (CLIENT, CLIENT_PORT);
    let second = (FAR_CLIENT, CLIENT_PORT);
    let backend = (bed.remote_pod, POD_PORT);
    let v = bed.ingress(&tc, &frame(tcp(first, frontend, TCP_SYN)));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    assert_eq!(parse(&v.frame).src, (bed.node1, PORT));
    let keys = [
        ct_key(first, frontend, PROTO_TCP),
        ct_key(backend, (bed.node1, PORT), PROTO_TCP),
    ];
    let reply = |bed: &SnatBed, tc: &Tc, flags: u8| {
        let v = bed.ingress(tc, &frame(tcp(backend, (bed.node1, PORT), flags)));
        assert_eq!(v.ret, TC_ACT_REDIRECT, "reply of the first flow translated");
        assert_eq!(parse(&v.frame).dst, first);
    };
    reply(&bed, &tc, TCP_SYN | TCP_ACK);
    let syn = frame(tcp(second, frontend, TCP_SYN));

    // Open, even when idle for long: its port stays its own.
    age_flow(&mut tc, keys);
    assert_eq!(bed.ingress(&tc, &syn).ret, TC_ACT_SHOT, "open flow kept");
    // Half closed (the client's FIN only): still its own.
    let v = bed.ingress(&tc, &frame(tcp(first, frontend, TCP_FIN | TCP_ACK)));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    age_flow(&mut tc, keys);
    assert_eq!(
        bed.ingress(&tc, &syn).ret,
        TC_ACT_SHOT,
        "half-closed flow kept"
    );
    // Closed both ways, but its last packets just passed: not yet.
    reply(&bed, &tc, TCP_FIN | TCP_ACK);
    assert_eq!(
        bed.ingress(&tc, &syn).ret,
        TC_ACT_SHOT,
        "closed flow not quiet yet"
    );

    // Closed and quiet: the new flow gets the port, and the old flow's entries are gone.
    age_flow(&mut tc, keys);
    let v = bed.ingress(&tc, &syn);
    assert_eq!(v.ret, TC_ACT_REDIRECT, "ended flow's port reused");
    assert_eq!(parse(&v.frame).src, (bed.node1, PORT));
    assert_checksums_valid(&v.frame);
    assert_eq!(
        tc.conntrack(keys[0]),
        None,
        "old original-direction entry deleted"
    );
    let taken = tc.conntrack(keys[1]).expect("reply entry");
    assert_eq!(
        (taken.nat_addr, taken.nat_port, taken.state),
        (be(second.0), second.1.to_be(), 0),
        "reply entry now the new flow's"
    );
    assert_eq!(tc.conntrack_len(), 2);
    let v = bed.ingress(
        &tc,
        &frame(tcp(backend, (bed.node1, PORT), TCP_SYN | TCP_ACK)),
    );
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    assert_eq!(
        (parse(&v.frame).src, parse(&v.frame).dst),
        (frontend, second),
        "the backend's reply goes to the new client"
    );

    // A reset ends a flow too.
    let v = bed.ingress(&tc, &frame(tcp(second, frontend, TCP_RST)));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    age_flow(&mut tc, [ct_key(second, frontend, PROTO_TCP), keys[1]]);
    let v = bed.ingress(&tc, &frame(tcp(first, frontend, TCP_SYN)));
    assert_eq!(v.ret, TC_ACT_REDIRECT, "reset flow's port reused");
    assert_eq!(tc.conntrack(ct_key(second, frontend, PROTO_TCP)), None);
}

/// node1's NodePort 30053/UDP, masqueraded, with node2-pod1 (remote) as its one backend.
fn masquerade_udp_to_remote_backend() -> (SnatBed, Tc, (Ipv4Addr, u16)) {
    let bed = SnatBed::new();
    let mut tc = Tc::load();
    tc.snat(SNAT_PORTS, bed.ifindex, bed.node1);
    let frontend = (bed.node1, 30053);
    tc.external(
        frontend,
        PROTO_UDP,
        9,
        SERVICE_FLAG_MASQUERADE,
        &[bed.remote_pod],
    );
    (bed, tc, frontend)
}

#[test]
fn masquerade_udp_flow_keeps_valid_checksums_both_ways() {
    let (bed, tc, frontend) = masquerade_udp_to_remote_backend();
    let client = (CLIENT, 5353);
    let v = bed.ingress(&tc, &frame(udp(client, frontend, true)));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    let out = parse(&v.frame);
    assert_eq!(out.src.0, bed.node1);
    assert_ne!(out.l4_csum, 0);
    assert_checksums_valid(&v.frame);
    let answer = frame(udp((bed.remote_pod, POD_PORT), out.src, true));
    let v = bed.ingress(&tc, &answer);
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    assert_eq!(
        (parse(&v.frame).src, parse(&v.frame).dst),
        (frontend, client)
    );
    assert_checksums_valid(&v.frame);
}

#[test]
fn masquerade_flow_to_a_local_backend_is_only_dnatted() {
    let bed = SnatBed::new();
    let mut tc = Tc::load();
    tc.snat(SNAT_PORTS, bed.ifindex, bed.node1);
    let frontend = (bed.node1, NODE_PORT);
    tc.external(
        frontend,
        PROTO_TCP,
        7,
        SERVICE_FLAG_MASQUERADE,
        &[bed.local_pod],
    );
    let syn = frame(tcp((CLIENT, CLIENT_PORT), frontend, TCP_SYN));
    // The pod's replies pass this node's egress on their own: the kernel forwards the packet,
    // the client address is kept.
    let v = bed.ingress(&tc, &syn);
    assert_dnat(&v, &syn, (bed.local_pod, POD_PORT));
    let entries = tc.conntrack_entries();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|(_, v)| v.flags & CT_FLAG_SNAT == 0));
}

#[test]
fn packets_outside_services_pass_untouched_with_source_nat_configured() {
    let bed = SnatBed::new();
    let mut tc = Tc::load();
    tc.snat(SNAT_PORTS, bed.ifindex, bed.node1);
    tc.external(
        (bed.node1, NODE_PORT),
        PROTO_TCP,
        7,
        SERVICE_FLAG_MASQUERADE,
        &[bed.remote_pod],
    );
    for case in [
        // To a port in the NAT range that no flow owns, and below it.
        frame(tcp((CLIENT, CLIENT_PORT), (bed.node1, 40000), TCP_SYN)),
        frame(tcp((bed.remote_pod, POD_PORT), (bed.node1, 40000), TCP_ACK)),
        frame(udp((CLIENT, CLIENT_PORT), (bed.node1, 53), true)),
    ] {
        assert_untouched(&bed.ingress(&tc, &case), &case);
    }
    assert_eq!(tc.conntrack_len(), 0);
}

#[test]
fn masquerade_flow_without_a_snat_address_is_dropped() {
    let bed = SnatBed::new();
    let mut tc = Tc::load();
    // Port range but no address for this device.
    tc.snat(SNAT_PORTS, bed.ifindex + 1000, bed.node1);
    tc.external(
        (bed.node1, NODE_PORT),
        PROTO_TCP,
        7,
        SERVICE_FLAG_MASQUERADE,
        &[bed.remote_pod],
    );
    let syn = frame(tcp((CLIENT, CLIENT_PORT), (bed.node1, NODE_PORT), TCP_SYN));
    assert_eq!(bed.ingress(&tc, &syn).ret, TC_ACT_SHOT);
    assert_eq!(tc.conntrack_len(), 0);
}

#[test]
fn new_flows_are_spread_over_the_backends() {
    let mut tc = Tc::load();
    tc.external((NODE, 30053), PROTO_UDP, 9, 0, &[POD_A, POD_B]);
    let mut seen = std::collections::BTreeSet::new();
    for port in 0..64 {
        let f = frame(udp((CLIENT, 20_000 + port), (NODE, 30053), true));
        let v = tc.ingress(&f);
        let dst = parse(&v.frame).dst;
        assert_dnat(&v, &f, dst);
        seen.insert(dst.0);
    }
    assert_eq!(seen, [POD_A, POD_B].into(), "both backends chosen");
}

#[test]
fn client_ip_affinity_sends_every_flow_of_a_client_to_one_backend() {
    let mut tc = Tc::load();
    tc.external(
        (NODE, 30053),
        PROTO_UDP,
        9,
        SERVICE_FLAG_AFFINITY,
        &[POD_A, POD_B],
    );
    let first = tc.ingress(&frame(udp((CLIENT, 20_000), (NODE, 30053), true)));
    let chosen = parse(&first.frame).dst;
    for port in 1..32 {
        let f = frame(udp((CLIENT, 20_000 + port), (NODE, 30053), true));
        assert_dnat(&tc.ingress(&f), &f, chosen);
    }
    let key = AffinityKey {
        netns_cookie: (1u64 << 63) | u64::from(be(CLIENT)),
        service_id: 9,
        pad: 0,
    };
    let remembered: AffinityValue = tc
        .hash::<AffinityKey, AffinityValue>(map_names::AFFINITY)
        .get(&key, 0)
        .expect("affinity entry keyed by the client address");
    assert_eq!(
        (remembered.backend.addr, remembered.backend.port),
        (be(chosen.0), chosen.1.to_be())
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals from the node (services without endpoints), segments without a flow

/// SYN options as Linux sends them: MSS, SACK permitted, timestamps, NOP, window scale.
const SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];

/// `reply` is the RST|ACK answering the SYN `syn`: back to where it came from, acknowledging
/// it and its data, with valid checksums and nothing after the 20-byte header.
fn assert_tcp_reset(reply: &[u8], syn: &[u8]) {
    assert_eq!(reply.len(), L4_OFF + 20, "headers only");
    assert_eq!(reply[..6], syn[6..12], "to the sender's MAC");
    assert_eq!(reply[6..12], syn[..6], "from the MAC it was sent to");
    let (request, answer) = (parse(syn), parse(reply));
    assert_eq!(
        (answer.src, answer.dst),
        (request.dst, request.src),
        "from the frontend to the client"
    );
    let ip = &reply[ETH..L4_OFF];
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40, "IP total length");
    assert_eq!(ip[9], PROTO_TCP);
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let tcp = &reply[L4_OFF..];
    assert_eq!(be32(&tcp[4..]), 0, "sequence number");
    let data_len = syn.len() - L4_OFF - usize::from(syn[L4_OFF + 12] >> 4) * 4;
    assert_eq!(
        be32(&tcp[8..]),
        be32(&syn[L4_OFF + 4..]).wrapping_add(1 + data_len as u32),
        "acknowledges the SYN and its data"
    );
    assert_eq!(tcp[12], 0x50, "no options");
    assert_eq!(tcp[13], TCP_RST | TCP_ACK);
    assert_eq!(tcp[18..20], [0, 0], "urgent pointer");
    assert_checksums_valid(reply);
}

#[test]
fn a_service_without_endpoints_answers_a_syn_with_a_reset_whatever_its_options() {
    let mut tc = Tc::load();
    tc.external((LB_IP, 443), PROTO_TCP, 1, 0, &[]);
    let client = (CLIENT, CLIENT_PORT);
    // With and without options, and carrying data (TCP Fast Open; lengths ending in each
    // of 0 to 3 bytes past a 4-byte word, summed out apart from the whole words, and one of
    // a full 1500-byte MTU): the RST is the headers only.
    let full = vec![0xa5u8; 1500 - 20 - 20 - SYN_OPTIONS.len()];
    for (options, payload) in [
        (&[][..], &[][..]),
        (&SYN_OPTIONS[..], &[][..]),
        (&SYN_OPTIONS[..], PAYLOAD),
        (&[][..], &PAYLOAD[..PAYLOAD.len() - 1]),
        (&[][..], &PAYLOAD[..PAYLOAD.len() - 2]),
        (&[][..], &PAYLOAD[..PAYLOAD.len() - 3]),
        (&SYN_OPTIONS[..], &full[..]),
    ] {
        let syn = frame_with(tcp(client, (LB_IP, 443), TCP_SYN), options, payload);
        assert_checksums_valid(&syn);
        let v = tc.ingress(&syn);
        assert_eq!(
            v.ret,
            TC_ACT_REDIRECT,
            "sent back out ({} bytes of data)",
            payload.len()
        );
        assert_tcp_reset(&v.frame, &syn);
    }
    assert_eq!(tc.conntrack_len(), 0);
}

#[test]
fn a_service_without_endpoints_answers_udp_with_icmp_port_unreachable() {
    let mut tc = Tc::load();
    tc.external((LB_IP, 53), PROTO_UDP, 1, 0, &[]);
    let client = (CLIENT, 5353);
    // Longer and shorter than the answer, with and without a UDP checksum.
    for datagram in [
        frame(udp(client, (LB_IP, 53), true)),
        frame_with(udp(client, (LB_IP, 53), false), &[], &[]),
    ] {
        let v = tc.ingress(&datagram);
        assert_eq!(v.ret, TC_ACT_REDIRECT, "sent back out");
        let f = &v.frame;
        assert_eq!(f.len(), ETH + 20 + 8 + 28, "IP, ICMP and the quote only");
        assert_eq!(f[..6], datagram[6..12], "to the sender's MAC");
        assert_eq!(f[6..12], datagram[..6], "from the MAC it was sent to");
        let icmp = parse_icmp(f);
        assert_eq!((icmp.src, icmp.dst), (LB_IP, CLIENT));
        assert_eq!((icmp.icmp_type, icmp.code), (3, 3), "port unreachable");
        assert_eq!(
            f[L4_OFF + 8..],
            datagram[ETH..ETH + 28],
            "quotes the datagram's IP and UDP headers"
        );
        assert_icmp_checksums_valid(f);
    }
    assert_eq!(tc.conntrack_len(), 0);
}

#[test]
fn port_unreachable_answers_are_rate_limited_per_client_as_the_kernels_and_resets_are_not() {
    let mut tc = Tc::load();
    tc.external((LB_IP, 53), PROTO_UDP, 1, 0, &[]);
    tc.external((LB_IP, 80), PROTO_TCP, 2, 0, &[]);
    // Without limits written (a node with icmp_ratelimit 0, as the testbed's), every
    // datagram is answered.
    let unlimited = (0..20)
        .filter(|_| {
            tc.ingress(&frame(udp((CLIENT, 5353), (LB_IP, 53), true)))
                .ret
                == TC_ACT_REDIRECT
        })
        .count();
    assert_eq!(unlimited, 20);
    // The kernel's defaults (icmp_ratelimit 1000 ms, icmp_msgs_per_sec 1000, burst 50).
    tc.refusal_limits(RefusalLimits {
        client_interval_ns: 1_000_000_000,
        client_burst_ns: 6_000_000_000,
        global_interval_ns: 1_000_000,
        global_burst_ns: 50_000_000,
    });
    let answered = |tc: &Tc, client: Ipv4Addr, count: usize| {
        (0..count)
            .filter(|_| {
                let v = tc.ingress(&frame(udp((client, 5353), (LB_IP, 53), true)));
                match v.ret {
                    TC_ACT_REDIRECT => true,
                    TC_ACT_SHOT => false,
                    other => panic!("verdict {other}"),
                }
            })
            .count()
    };
    // icmp_ratelimit: a burst of 6 per client, then one a second (this loop takes far less).
    let first = answered(&tc, Ipv4Addr::new(203, 0, 113, 8), 20);
    assert!((6..=7).contains(&first), "{first} of 20 datagrams answered");
    assert_eq!(
        answered(&tc, FAR_CLIENT, 6),
        6,
        "another client has its own burst"
    );
    let resets = (0..20)
        .filter(|_| {
            let syn = frame_with(tcp((CLIENT, CLIENT_PORT), (LB_IP, 80), TCP_SYN), &[], &[]);
            tc.ingress(&syn).ret == TC_ACT_REDIRECT
        })
        .count();
    assert_eq!(resets, 20, "every SYN gets its reset");
}

#[test]
fn a_segment_without_a_flow_is_dropped_unless_the_frontend_is_a_node_address() {
    let bed = SnatBed::new();
    let mut tc = Tc::load();
    // Not an address of node1, which would route it on (its default route).
    let lb = Ipv4Addr::new(198, 18, 200, 1);
    tc.external((lb, 80), PROTO_TCP, 1, 0, &[bed.remote_pod]);
    tc.external((lb, 81), PROTO_TCP, 2, 0, &[]);
    tc.external((bed.node1, NODE_PORT), PROTO_TCP, 3, 0, &[bed.remote_pod]);
    let client = (CLIENT, CLIENT_PORT);
    for flags in [
        TCP_ACK,
        TCP_ACK | TCP_PSH,
        TCP_RST,
        TCP_SYN | TCP_ACK,
        TCP_FIN | TCP_ACK,
    ] {
        for frontend in [(lb, 80), (lb, 81)] {
            let stray = frame(tcp(client, frontend, flags));
            let v = bed.ingress(&tc, &stray);
            assert_eq!(v.ret, TC_ACT_SHOT, "flags {flags:#x} to {frontend:?}");
        }
        // The node's own stack answers for its address (and a node process's connection
        // from that port keeps working).
        let to_node = frame(tcp(client, (bed.node1, NODE_PORT), flags));
        assert_untouched(&bed.ingress(&tc, &to_node), &to_node);
    }
    assert_eq!(tc.conntrack_len(), 0);
}

// ---------------------------------------------------------------------------------------------
// Fragmented datagrams

/// A payload long enough to be split: 200 bytes of a pattern.
fn long_payload() -> Vec<u8> {
    (0..200u8).collect()
}

/// Sets the IP header's id, fragment field and total length and recomputes its checksum.
fn set_ip_fields(f: &mut [u8], id: u16, frag_off: u16) {
    let tot_len = (f.len() - ETH) as u16;
    f[ETH + 2..ETH + 4].copy_from_slice(&tot_len.to_be_bytes());
    f[ETH + 4..ETH + 6].copy_from_slice(&id.to_be_bytes());
    f[ETH + 6..ETH + 8].copy_from_slice(&frag_off.to_be_bytes());
    f[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
    let csum = !fold(sum16(&f[ETH..L4_OFF]));
    f[ETH + 10..ETH + 12].copy_from_slice(&csum.to_be_bytes());
}

/// Splits a whole datagram's frame into its first fragment (the first `first_len` bytes of the
/// IP payload, a multiple of 8, "more fragments") and the last one (the rest, at its offset),
/// both with IP id `id`, as a sender's stack fragments it.
fn fragments(whole: &[u8], first_len: usize, id: u16) -> [Vec<u8>; 2] {
    assert_eq!(first_len % 8, 0);
    let mut first = whole[..L4_OFF + first_len].to_vec();
    set_ip_fields(&mut first, id, 0x2000);
    let mut last = whole[..L4_OFF].to_vec();
    last.extend_from_slice(&whole[L4_OFF + first_len..]);
    set_ip_fields(&mut last, id, (first_len / 8) as u16);
    [first, last]
}

/// The whole datagram the receiver reassembles from the two fragments (headers of the first).
fn reassemble(fragments: &[Vec<u8>; 2]) -> Vec<u8> {
    let [first, last] = fragments;
    assert_eq!(
        first[ETH + 12..ETH + 20],
        last[ETH + 12..ETH + 20],
        "same addresses"
    );
    assert_eq!(first[ETH + 4..ETH + 6], last[ETH + 4..ETH + 6], "same id");
    let mut whole = first.clone();
    whole.extend_from_slice(&last[L4_OFF..]);
    set_ip_fields(&mut whole, 0x1234, 0);
    whole
}

/// A later fragment leaves with only its addresses changed: the payload as it was, the IP
/// header's checksum right.
fn assert_later_fragment(v: &Verdict, input: &[u8], src: Ipv4Addr, dst: Ipv4Addr) {
    let f = &v.frame;
    assert_eq!(f.len(), input.len());
    assert_eq!(
        (
            Ipv4Addr::from(<[u8; 4]>::try_from(&f[ETH + 12..ETH + 16]).unwrap()),
            Ipv4Addr::from(<[u8; 4]>::try_from(&f[ETH + 16..ETH + 20]).unwrap())
        ),
        (src, dst),
        "addresses of the later fragment"
    );
    assert_eq!(
        f[ETH + 4..ETH + 8],
        input[ETH + 4..ETH + 8],
        "id and offset kept"
    );
    assert_eq!(f[L4_OFF..], input[L4_OFF..], "payload untouched");
    assert_eq!(fold(sum16(&f[ETH..L4_OFF])), 0xffff, "IPv4 header checksum");
}

#[test]
fn the_later_fragments_of_a_datagram_follow_its_first_fragment_both_ways() {
    let mut tc = Tc::load();
    tc.external((NODE, 30053), PROTO_UDP, 9, 0, &[POD_A]);
    let client = (CLIENT, 5353);
    let query = frame_with(udp(client, (NODE, 30053), true), &[], &long_payload());
    let parts = fragments(&query, 64, 0x0a01);

    let first = tc.ingress(&parts[0]);
    assert_eq!(first.ret, TC_ACT_OK);
    assert_eq!(
        parse(&first.frame).dst,
        (POD_A, POD_PORT),
        "first fragment DNATed"
    );
    let later = tc.ingress(&parts[1]);
    assert_eq!(later.ret, TC_ACT_OK);
    assert_later_fragment(&later, &parts[1], CLIENT, POD_A);
    // What the backend reassembles is the datagram to it, its checksum right over the whole.
    let received = reassemble(&[first.frame, later.frame]);
    assert_eq!(parse(&received).dst, (POD_A, POD_PORT));
    assert_checksums_valid(&received);
    assert_eq!(
        tc.conntrack_len(),
        2,
        "one flow, whatever the number of fragments"
    );

    // The backend's long answer, fragmented on its way back: the source becomes the frontend.
    let answer = frame_with(udp((POD_A, POD_PORT), client, true), &[], &long_payload());
    let parts = fragments(&answer, 96, 0x0b02);
    let first = tc.egress(&parts[0]);
    assert_eq!(
        parse(&first.frame).src,
        (NODE, 30053),
        "first fragment reverse-NATed"
    );
    let later = tc.egress(&parts[1]);
    assert_eq!(later.ret, TC_ACT_OK);
    assert_later_fragment(&later, &parts[1], NODE, CLIENT);
    let received = reassemble(&[first.frame, later.frame]);
    assert_eq!(parse(&received).src, (NODE, 30053));
    assert_checksums_valid(&received);

    // A later fragment whose first fragment was not seen (another datagram, or one arriving
    // before its first fragment) is left as it is, either way.
    let [_, stray] = fragments(&query, 64, 0x0c03);
    assert_untouched(&tc.ingress(&stray), &stray);
    let [_, stray] = fragments(&answer, 96, 0x0c04);
    assert_untouched(&tc.egress(&stray), &stray);
}

#[test]
fn the_later_fragments_of_a_source_natted_datagram_follow_it_both_ways() {
    let (bed, tc, frontend) = masquerade_udp_to_remote_backend();
    let client = (CLIENT, 5353);
    let query = frame_with(udp(client, frontend, true), &[], &long_payload());
    let parts = fragments(&query, 64, 0x0a01);
    let first = bed.ingress(&tc, &parts[0]);
    assert_eq!(first.ret, TC_ACT_REDIRECT);
    let out = parse(&first.frame);
    assert_eq!(
        (out.src.0, out.dst),
        (bed.node1, (bed.remote_pod, POD_PORT))
    );
    let later = bed.ingress(&tc, &parts[1]);
    assert_eq!(later.ret, TC_ACT_REDIRECT, "sent after its first fragment");
    assert_eq!(
        later.frame[..12],
        first.frame[..12],
        "to the same neighbour"
    );
    assert_later_fragment(&later, &parts[1], bed.node1, bed.remote_pod);
    assert_checksums_valid(&reassemble(&[first.frame, later.frame]));

    let answer = frame_with(
        udp((bed.remote_pod, POD_PORT), out.src, true),
        &[],
        &long_payload(),
    );
    let parts = fragments(&answer, 96, 0x0b02);
    let first = bed.ingress(&tc, &parts[0]);
    assert_eq!(first.ret, TC_ACT_REDIRECT);
    assert_eq!(
        (parse(&first.frame).src, parse(&first.frame).dst),
        (frontend, client)
    );
    let later = bed.ingress(&tc, &parts[1]);
    assert_eq!(later.ret, TC_ACT_REDIRECT);
    assert_later_fragment(&later, &parts[1], bed.node1, CLIENT);
    let received = reassemble(&[first.frame, later.frame]);
    assert_eq!(
        (parse(&received).src, parse(&received).dst),
        (frontend, client)
    );
    assert_checksums_valid(&received);
}

#[test]
fn the_later_fragments_of_a_refused_datagram_never_leave_for_a_service_address() {
    let bed = SnatBed::new();
    let mut tc = Tc::load();
    // Not an address of node1, which would route it on (its default route).
    let lb = Ipv4Addr::new(198, 18, 200, 1);
    tc.external((lb, 53), PROTO_UDP, 1, 0, &[]);
    tc.external((bed.node1, 30095), PROTO_UDP, 2, 0, &[]);
    let client = (CLIENT, 5353);
    for (frontend, later_verdict) in [((lb, 53), TC_ACT_SHOT), ((bed.node1, 30095), TC_ACT_OK)] {
        let query = frame_with(udp(client, frontend, true), &[], &long_payload());
        let parts = fragments(&query, 64, 0x0d05);
        let first = bed.ingress(&tc, &parts[0]);
        assert_eq!(first.ret, TC_ACT_REDIRECT, "the first fragment is refused");
        let icmp = parse_icmp(&first.frame);
        assert_eq!((icmp.icmp_type, icmp.code), (3, 3), "port unreachable");
        assert_later_fragment_kept(&bed.ingress(&tc, &parts[1]), &parts[1], later_verdict);
    }
    assert_eq!(tc.conntrack_len(), 0);
}

/// The later fragment of a refused datagram: dropped (`TC_ACT_SHOT`), or passed untouched
/// (`TC_ACT_OK`) to the node's own stack, which drops the incomplete datagram after its timeout.
fn assert_later_fragment_kept(later: &Verdict, input: &[u8], verdict: u32) {
    assert_eq!(later.ret, verdict, "the later fragment's verdict");
    if verdict == TC_ACT_OK {
        assert_eq!(later.frame, input, "passed untouched");
    }
}

// ---------------------------------------------------------------------------------------------
// Flow state on the entries

fn state_of(tc: &mut Tc, key: CtKey) -> u16 {
    tc.conntrack(key).expect("entry").state
}

#[test]
fn entries_record_answers_fins_and_resets_and_a_new_syn_starts_over() {
    let mut tc = Tc::load();
    tc.external((LB_IP, 443), PROTO_TCP, 3, 0, &[POD_B]);
    let client = (CLIENT, CLIENT_PORT);
    let forward = ct_key(client, (LB_IP, 443), PROTO_TCP);
    let reply = ct_key((POD_B, POD_PORT), client, PROTO_TCP);
    let syn = frame(tcp(client, (LB_IP, 443), TCP_SYN));
    assert_dnat(&tc.ingress(&syn), &syn, (POD_B, POD_PORT));
    assert_eq!(state_of(&mut tc, forward), CT_STATE_SEEN);
    assert_eq!(state_of(&mut tc, reply), 0, "not answered yet");

    let syn_ack = frame(tcp((POD_B, POD_PORT), client, TCP_SYN | TCP_ACK));
    assert_eq!(tc.egress(&syn_ack).ret, TC_ACT_OK);
    assert_eq!(state_of(&mut tc, reply), CT_STATE_SEEN, "answered");

    let fin = frame(tcp(client, (LB_IP, 443), TCP_FIN | TCP_ACK));
    assert_dnat(&tc.ingress(&fin), &fin, (POD_B, POD_PORT));
    assert_eq!(state_of(&mut tc, forward), CT_STATE_SEEN | CT_STATE_FIN);
    let rst = frame(tcp((POD_B, POD_PORT), client, TCP_RST | TCP_ACK));
    assert_eq!(tc.egress(&rst).ret, TC_ACT_OK);
    assert_eq!(state_of(&mut tc, reply), CT_STATE_SEEN | CT_STATE_RST);

    // The client reuses its port: same backend, both directions start over.
    assert_dnat(&tc.ingress(&syn), &syn, (POD_B, POD_PORT));
    assert_eq!(state_of(&mut tc, forward), CT_STATE_SEEN);
    assert_eq!(state_of(&mut tc, reply), 0);
    assert_eq!(tc.conntrack_len(), 2);
}

#[test]
fn a_new_connection_on_an_ended_flows_tuple_gets_a_backend_of_the_service_as_it_is_now() {
    let mut tc = Tc::load();
    tc.external((LB_IP, 443), PROTO_TCP, 3, 0, &[POD_A]);
    let client = (CLIENT, CLIENT_PORT);
    let syn = frame(tcp(client, (LB_IP, 443), TCP_SYN));
    assert_dnat(&tc.ingress(&syn), &syn, (POD_A, POD_PORT));
    // POD_A leaves the service (its flows stay tracked, as TCP conntrack entries do).
    tc.external((LB_IP, 443), PROTO_TCP, 3, 0, &[POD_B]);
    // A retransmitted SYN of the live connection keeps its backend.
    assert_dnat(&tc.ingress(&syn), &syn, (POD_A, POD_PORT));
    let syn_ack = frame(tcp((POD_A, POD_PORT), client, TCP_SYN | TCP_ACK));
    assert_eq!(tc.egress(&syn_ack).ret, TC_ACT_OK);
    // Half closed: a SYN still belongs to the old connection.
    let fin = frame(tcp(client, (LB_IP, 443), TCP_FIN | TCP_ACK));
    assert_dnat(&tc.ingress(&fin), &fin, (POD_A, POD_PORT));
    assert_dnat(&tc.ingress(&syn), &syn, (POD_A, POD_PORT));
    // Closed both ways: the client reuses its port for a new connection, which goes to a
    // backend the service has now, with fresh entries.
    assert_dnat(&tc.ingress(&fin), &fin, (POD_A, POD_PORT));
    let fin_back = frame(tcp((POD_A, POD_PORT), client, TCP_FIN | TCP_ACK));
    assert_eq!(tc.egress(&fin_back).ret, TC_ACT_OK);
    assert_dnat(&tc.ingress(&syn), &syn, (POD_B, POD_PORT));
    assert_eq!(
        tc.conntrack(ct_key((POD_A, POD_PORT), client, PROTO_TCP)),
        None,
        "the old reply entry is gone"
    );
    let reply = tc
        .conntrack(ct_key((POD_B, POD_PORT), client, PROTO_TCP))
        .expect("the new flow's reply entry");
    assert_eq!(reply.state, 0, "not answered yet");
    assert_eq!(tc.conntrack_len(), 2);
    // After a reset too.
    tc.external((LB_IP, 443), PROTO_TCP, 3, 0, &[POD_A]);
    let rst = frame(tcp(client, (LB_IP, 443), TCP_RST));
    assert_dnat(&tc.ingress(&rst), &rst, (POD_B, POD_PORT));
    assert_dnat(&tc.ingress(&syn), &syn, (POD_A, POD_PORT));
}

// ---------------------------------------------------------------------------------------------
// ICMP errors about translated flows

/// A router between the client and the node, or between the node and a backend.
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// The rest of a fragmentation-needed header: unused, next-hop MTU 1280.
const MTU_1280: [u8; 4] = [0, 0, 0x05, 0x00];

/// An ICMP destination unreachable from `from` to `to` quoting `quoted` (an IP packet, whole
/// or cut), with correct checksums.
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x03]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 8 + quoted.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&from.octets());
    ip[16..20].copy_from_slice(&to.octets());
    let csum = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut icmp = vec![ICMP_DEST_UNREACH, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quoted);
    let csum = !fold(sum16(&icmp));
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&icmp);
    f
}

/// What a test reads back out of an ICMP (`A` = [`Ipv4Addr`]) or ICMPv6 error frame.
#[derive(Debug)]
struct IcmpParsed<A> {
    src: A,
    dst: A,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quoted_src: (A, u16),
    quoted_dst: (A, u16),
}

const QUOTE: usize = L4_OFF + 8;

fn parse_icmp(f: &[u8]) -> IcmpParsed<Ipv4Addr> {
    let ip4 = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    let be16 = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    assert_eq!(f[ETH + 9], 1, "ICMP");
    IcmpParsed {
        src: ip4(ETH + 12),
        dst: ip4(ETH + 16),
        icmp_type: f[L4_OFF],
        code: f[L4_OFF + 1],
        rest: [f[L4_OFF + 4], f[L4_OFF + 5], f[L4_OFF + 6], f[L4_OFF + 7]],
        quoted_src: (ip4(QUOTE + 12), be16(QUOTE + 20)),
        quoted_dst: (ip4(QUOTE + 16), be16(QUOTE + 22)),
    }
}

/// The outer IP header, the ICMP message, the quoted IP header and, when the quote holds the
/// whole datagram, its TCP/UDP checksum are all valid.
fn assert_icmp_checksums_valid(f: &[u8]) {
    assert_eq!(fold(sum16(&f[ETH..L4_OFF])), 0xffff, "outer IP checksum");
    assert_eq!(fold(sum16(&f[L4_OFF..])), 0xffff, "ICMP checksum");
    let quote = &f[QUOTE..];
    assert_eq!(fold(sum16(&quote[..20])), 0xffff, "quoted IP checksum");
    let quoted_len = usize::from(u16::from_be_bytes([quote[2], quote[3]]));
    if quote.len() < quoted_len {
        return;
    }
    let proto = quote[9];
    let l4 = &quote[20..quoted_len];
    let csum_at = if proto == PROTO_TCP { 16 } else { 6 };
    if proto == PROTO_UDP && l4[csum_at..csum_at + 2] == [0, 0] {
        return;
    }
    let src: [u8; 4] = quote[12..16].try_into().unwrap();
    let dst: [u8; 4] = quote[16..20].try_into().unwrap();
    let sum = pseudo_sum(src, dst, proto, l4.len()) + sum16(l4);
    assert_eq!(fold(sum), 0xffff, "quoted L4 checksum of proto {proto}");
}

#[test]
fn an_error_quoting_a_first_fragment_is_translated_and_one_quoting_a_later_fragment_is_not() {
    let mut tc = Tc::load();
    tc.external((NODE, 30053), PROTO_UDP, 9, 0, &[POD_A]);
    let client = (CLIENT, 5353);
    let query = frame(udp(client, (NODE, 30053), true));
    assert_dnat(&tc.ingress(&query), &query, (POD_A, POD_PORT));
    // The backend's long answer left the node fragmented, as frontend -> client, and a router
    // cannot deliver it: its error quotes the first fragment, and the backend must get it as
    // about exactly the first fragment it sent.
    // Its second fragment starts with what looks like the flow's ports, as a quote's ports
    // would: only its fragment offset tells it has none.
    let mut payload = long_payload();
    payload[56..58].copy_from_slice(&30053u16.to_be_bytes());
    payload[58..60].copy_from_slice(&5353u16.to_be_bytes());
    let answer = |from| frame_with(udp(from, client, true), &[], &payload);
    let sent = fragments(&answer((POD_A, POD_PORT)), 64, 0x0e01);
    let left = fragments(&answer((NODE, 30053)), 64, 0x0e01);
    let host_unreachable = 1;
    let error = icmp_error(ROUTER, NODE, host_unreachable, [0; 4], &left[0][ETH..]);
    let v = tc.ingress(&error);
    assert_eq!(v.ret, TC_ACT_OK);
    assert_eq!(
        v.frame,
        icmp_error(ROUTER, POD_A, host_unreachable, [0; 4], &sent[0][ETH..]),
        "to the backend, quoting its own first fragment"
    );
    // A quoted later fragment has no ports to match the flow by.
    let error = icmp_error(ROUTER, NODE, host_unreachable, [0; 4], &left[1][ETH..]);
    assert_untouched(&tc.ingress(&error), &error);
}

#[test]
fn an_error_about_a_reply_reaches_the_local_backend_as_about_the_backends_own_packet() {
    let mut tc = Tc::load();
    tc.external((NODE, NODE_PORT), PROTO_TCP, 7, 0, &[POD_A]);
    let client = (CLIENT, CLIENT_PORT);
    let syn = frame(tcp(client, (NODE, NODE_PORT), TCP_SYN));
    assert_dnat(&tc.ingress(&syn), &syn, (POD_A, POD_PORT));
    // A router in front of the client cannot forward a reply as it left the node
    // (frontend -> client): the whole segment quoted, or only its first 8 bytes.
    let reply = frame(tcp((NODE, NODE_PORT), client, TCP_ACK | TCP_PSH));
    for quoted in [&reply[ETH..], &reply[ETH..L4_OFF + 8]] {
        let error = icmp_error(ROUTER, NODE, ICMP_FRAG_NEEDED, MTU_1280, quoted);
        assert_icmp_checksums_valid(&error);
        let v = tc.ingress(&error);
        assert_eq!(v.ret, TC_ACT_OK, "the kernel routes it to the pod");
        let out = parse_icmp(&v.frame);
        assert_eq!((out.src, out.dst), (ROUTER, POD_A), "to the backend");
        assert_eq!(
            (out.quoted_src, out.quoted_dst),
            ((POD_A, POD_PORT), client),
            "about the backend's packet"
        );
        assert_eq!(
            (out.icmp_type, out.code, out.rest),
            (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, MTU_1280),
            "the MTU is kept"
        );
        assert_eq!(v.frame.len(), error.len());
        assert_icmp_checksums_valid(&v.frame);
    }
    // An error about a packet of no tracked flow is not touched.
    let other = frame(tcp((NODE, NODE_PORT), (CLIENT, CLIENT_PORT + 1), TCP_ACK));
    let error = icmp_error(ROUTER, NODE, ICMP_FRAG_NEEDED, MTU_1280, &other[ETH..]);
    assert_untouched(&tc.ingress(&error), &error);
    assert_untouched(&tc.egress(&error), &error);
}

#[test]
fn an_error_from_a_local_backend_leaves_as_coming_from_the_frontend() {
    let mut tc = Tc::load();
    tc.external((LB_IP, 53), PROTO_UDP, 9, 0, &[POD_A]);
    let client = (CLIENT, 5353);
    let query = frame(udp(client, (LB_IP, 53), true));
    assert_dnat(&tc.ingress(&query), &query, (POD_A, POD_PORT));
    // Nothing listens in the pod: it refuses the datagram as it got it (client -> pod).
    let translated = frame(udp(client, (POD_A, POD_PORT), true));
    let error = icmp_error(POD_A, CLIENT, ICMP_PORT_UNREACH, [0; 4], &translated[ETH..]);
    let v = tc.egress(&error);
    assert_eq!(v.ret, TC_ACT_OK);
    let out = parse_icmp(&v.frame);
    assert_eq!((out.src, out.dst), (LB_IP, CLIENT), "from the frontend");
    assert_eq!(
        (out.quoted_src, out.quoted_dst),
        (client, (LB_IP, 53)),
        "about the datagram the client sent"
    );
    assert_icmp_checksums_valid(&v.frame);
    // Ingress leaves such an error alone (it is not about a reply).
    assert_untouched(&tc.ingress(&error), &error);
}

#[test]
fn errors_about_a_source_natted_flow_are_translated_both_ways() {
    let bed = SnatBed::new();
    let mut tc = Tc::load();
    tc.snat(SNAT_PORTS, bed.ifindex, bed.node1);
    let frontend = (bed.node1, NODE_PORT);
    tc.external(
        frontend,
        PROTO_TCP,
        7,
        SERVICE_FLAG_MASQUERADE,
        &[bed.remote_pod],
    );
    let client = (CLIENT, CLIENT_PORT);
    let v = bed.ingress(&tc, &frame(tcp(client, frontend, TCP_SYN)));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    let nat = parse(&v.frame).src;
    let backend = (bed.remote_pod, POD_PORT);

    // From the client's side, about a reply (frontend -> client): on to the backend, as an
    // error about its packet to node:port, from the node.
    let reply = frame(tcp(frontend, client, TCP_ACK | TCP_PSH));
    let error = icmp_error(ROUTER, bed.node1, ICMP_FRAG_NEEDED, MTU_1280, &reply[ETH..]);
    let v = bed.ingress(&tc, &error);
    assert_eq!(v.ret, TC_ACT_REDIRECT, "redirected like the flow's packets");
    assert_eq!(v.frame[..6], NODE2_MAC, "towards the backend's node");
    let out = parse_icmp(&v.frame);
    assert_eq!((out.src, out.dst), (bed.node1, bed.remote_pod));
    assert_eq!((out.quoted_src, out.quoted_dst), (backend, nat));
    assert_eq!(out.rest, MTU_1280);
    assert_icmp_checksums_valid(&v.frame);

    // From the backend's side, about a packet it got (node:port -> backend): back to the
    // client, as an error about its packet to the frontend, from the frontend.
    let forwarded = frame(tcp(nat, backend, TCP_ACK | TCP_PSH));
    let error = icmp_error(
        bed.remote_pod,
        bed.node1,
        ICMP_FRAG_NEEDED,
        MTU_1280,
        &forwarded[ETH..],
    );
    let v = bed.ingress(&tc, &error);
    assert_eq!(v.ret, TC_ACT_REDIRECT, "redirected towards the client");
    let out = parse_icmp(&v.frame);
    assert_eq!((out.src, out.dst), (bed.node1, CLIENT));
    assert_eq!((out.quoted_src, out.quoted_dst), (client, frontend));
    assert_icmp_checksums_valid(&v.frame);
}

// ---------------------------------------------------------------------------------------------
// IPv6 (ethertype 0x86DD): the programs tail-call their IPv6 twins.

const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x10);
const LB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x20);
const POD6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 1, 0, 0, 0, 0x11);
const POD6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0x12);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x7);
const FAR_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, 0x7);
const IP6_HLEN: usize = 40;
const L4_OFF6: usize = ETH + IP6_HLEN;

type End6 = (Ipv6Addr, u16);

/// Ethernet + IPv6 (no extension header, or one `next_header` given by `ext`) + TCP/UDP +
/// payload with a correct checksum.
fn frame6_with(src: End6, dst: End6, l4: L4, ext: Option<u8>) -> Vec<u8> {
    let (proto, hdr_len) = match l4 {
        L4::Tcp { .. } => (PROTO_TCP, 20),
        L4::Udp { .. } => (PROTO_UDP, 8),
    };
    let mut seg = Vec::new();
    seg.extend_from_slice(&src.1.to_be_bytes());
    seg.extend_from_slice(&dst.1.to_be_bytes());
    match l4 {
        L4::Tcp { flags } => {
            seg.extend_from_slice(&0x0102_0304u32.to_be_bytes());
            let ack: u32 = if flags & TCP_ACK != 0 { 0x0a0b_0c0d } else { 0 };
            seg.extend_from_slice(&ack.to_be_bytes());
            seg.push(5 << 4);
            seg.push(flags);
            seg.extend_from_slice(&64240u16.to_be_bytes());
            seg.extend_from_slice(&[0, 0, 0, 0]);
        }
        L4::Udp { .. } => {
            seg.extend_from_slice(&((hdr_len + PAYLOAD.len()) as u16).to_be_bytes());
            seg.extend_from_slice(&[0, 0]);
        }
    }
    seg.extend_from_slice(PAYLOAD);
    let csum_off = if proto == PROTO_TCP { 16 } else { 6 };
    let csum = l4_csum6(src.0, dst.0, proto, &seg);
    seg[csum_off..csum_off + 2].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    let ext_len = if ext.is_some() { 8 } else { 0 };
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext_len + seg.len()) as u16).to_be_bytes());
    f.push(ext.unwrap_or(proto));
    f.push(64);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    if ext.is_some() {
        // A hop-by-hop/destination options header of 8 bytes (PadN), then the segment.
        f.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]);
    }
    f.extend_from_slice(&seg);
    f
}

fn frame6(src: End6, dst: End6, l4: L4) -> Vec<u8> {
    frame6_with(src, dst, l4, None)
}

/// Extension header types the tests put in front of TCP/UDP.
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_DEST_OPTIONS: u8 = 60;

/// An extension header of `kind` and `len` bytes (a multiple of 8): options headers hold PadN,
/// a routing header is of type 4 (segment routing) with `segments_left`, a fragment header is
/// the first fragment of more.
fn extension(kind: u8, len: usize, segments_left: u8) -> Vec<u8> {
    let mut h = vec![0u8; len];
    h[1] = if kind == EXT_FRAGMENT {
        0
    } else {
        (len / 8 - 1) as u8
    };
    match kind {
        EXT_ROUTING => {
            h[2] = 4;
            h[3] = segments_left;
        }
        EXT_FRAGMENT => h[3] = 1, // offset 0, more fragments
        _ => {
            h[2] = 1; // PadN over the rest
            h[3] = (len - 4) as u8;
        }
    }
    h
}

/// `frame` (a [`frame6`]) with the extension headers `headers` (type, bytes) chained between
/// its fixed header and its TCP/UDP header. No checksum changes: the pseudo header's length is
/// the upper layer's.
fn with_extensions(frame: &[u8], headers: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut f = frame[..L4_OFF6].to_vec();
    let upper = frame[ETH + 6];
    let total: usize = headers.iter().map(|(_, h)| h.len()).sum();
    let payload = u16::from_be_bytes([f[ETH + 4], f[ETH + 5]]) as usize + total;
    f[ETH + 4..ETH + 6].copy_from_slice(&(payload as u16).to_be_bytes());
    f[ETH + 6] = headers.first().map_or(upper, |(kind, _)| *kind);
    for (i, (_, h)) in headers.iter().enumerate() {
        let mut h = h.clone();
        h[0] = headers.get(i + 1).map_or(upper, |(kind, _)| *kind);
        f.extend_from_slice(&h);
    }
    f.extend_from_slice(&frame[L4_OFF6..]);
    f
}

/// The upper-layer protocol of an IPv6 frame and where its header starts, past the
/// extension headers.
fn upper_layer6(f: &[u8]) -> (u8, usize) {
    let (mut next, mut off) = (f[ETH + 6], L4_OFF6);
    while matches!(
        next,
        EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTIONS | EXT_FRAGMENT
    ) {
        let len = if next == EXT_FRAGMENT {
            8
        } else {
            (f[off + 1] as usize + 1) * 8
        };
        next = f[off];
        off += len;
    }
    (next, off)
}

/// The TCP/UDP checksum over the IPv6 pseudo header (0 is sent as 0xffff for UDP).
fn l4_csum6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, seg: &[u8]) -> u16 {
    let sum = sum16(&src.octets())
        + sum16(&dst.octets())
        + seg.len() as u32
        + u32::from(proto)
        + sum16(seg);
    let csum = !fold(sum);
    if csum == 0 {
        0xffff
    } else {
        csum
    }
}

fn parse6(f: &[u8]) -> (End6, End6) {
    let ip6 = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[o..o + 16]).unwrap());
    let be16 = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    let (_, l4) = upper_layer6(f);
    ((ip6(ETH + 8), be16(l4)), (ip6(ETH + 24), be16(l4 + 2)))
}

/// The segment sums to 0xffff with its pseudo header.
fn assert_checksum6_valid(f: &[u8]) {
    let (src, dst) = parse6(f);
    let (proto, l4) = upper_layer6(f);
    let seg = &f[l4..];
    let sum = sum16(&src.0.octets())
        + sum16(&dst.0.octets())
        + seg.len() as u32
        + u32::from(proto)
        + sum16(seg);
    assert_eq!(fold(sum), 0xffff, "L4 checksum of proto {proto}");
}

fn words6(ip: Ipv6Addr) -> [u32; 4] {
    switchyard::model::ebpf_plan::words(ip)
}

fn ct_key6(src: End6, dst: End6, proto: u8) -> CtKey6 {
    CtKey6 {
        src_addr: words6(src.0),
        dst_addr: words6(dst.0),
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        proto,
        pad: [0; 3],
    }
}

impl Tc {
    /// One IPv6 external frontend with the given backends and flags.
    fn external6(&mut self, frontend: End6, proto: u8, id: u32, flags: u16, pods: &[Ipv6Addr]) {
        for (slot, pod) in pods.iter().enumerate() {
            let key = BackendKey {
                service_id: id,
                slot: slot as u32,
            };
            let backend = Backend6 {
                addr: words6(*pod),
                port: POD_PORT.to_be(),
                pad: 0,
            };
            self.hash(map_names::BACKENDS6)
                .insert(key, backend, 0)
                .expect("insert backend");
        }
        let key = ServiceKey6 {
            addr: words6(frontend.0),
            port: frontend.1.to_be(),
            proto,
            scope: SCOPE_EXTERNAL,
        };
        let value = ServiceValue {
            id,
            count: pods.len() as u16,
            flags,
            affinity_timeout: if flags & SERVICE_FLAG_AFFINITY != 0 {
                10_800
            } else {
                0
            },
            ..ServiceValue::default()
        };
        self.hash(map_names::SERVICES6)
            .insert(key, value, 0)
            .expect("insert service");
    }

    fn conntrack6(&mut self, key: CtKey6) -> Option<CtValue6> {
        self.hash::<CtKey6, CtValue6>(map_names::CONNTRACK6)
            .get(&key, 0)
            .ok()
    }

    fn conntrack6_len(&mut self) -> usize {
        self.hash::<CtKey6, CtValue6>(map_names::CONNTRACK6)
            .keys()
            .count()
    }
}

impl SnatBed {
    /// A loaded object with source NAT on node1's eth0 as the controller writes it for both
    /// families (`ports`), node1's IPv6 address and node2-pod1's (a remote backend).
    fn ipv6(&self, ports: std::ops::RangeInclusive<u16>) -> (Tc, Ipv6Addr, Ipv6Addr) {
        let mut tc = Tc::load();
        let node1 = self.testbed.node(1).underlay_ipv6;
        tc.snat(ports, self.ifindex, self.node1);
        tc.hash::<u32, [u32; 4]>(map_names::SNAT_ADDRS6)
            .insert(self.ifindex, words6(node1), 0)
            .expect("write the IPv6 snat address");
        (tc, node1, self.testbed.pod(2, 1).ip6)
    }
}

fn assert_dnat6(v: &Verdict, input: &[u8], to: End6) {
    assert_eq!(v.ret, TC_ACT_OK, "verdict");
    let (src, dst) = parse6(&v.frame);
    assert_eq!(dst, to, "destination rewritten");
    assert_eq!(src, parse6(input).0, "source kept");
    assert_eq!(v.frame.len(), input.len());
    assert_checksum6_valid(&v.frame);
}

/// The backend's SYN-ACK to `client` leaves from `frontend`, its checksum valid.
fn assert_syn_ack_leaves_as(tc: &Tc, backend: End6, client: End6, frontend: End6) {
    let syn_ack = frame6(
        backend,
        client,
        L4::Tcp {
            flags: TCP_SYN | TCP_ACK,
        },
    );
    let v = tc.egress(&syn_ack);
    assert_eq!(v.ret, TC_ACT_OK);
    assert_eq!(parse6(&v.frame), (frontend, client));
    assert_checksum6_valid(&v.frame);
}

#[test]
fn ipv6_tcp_to_a_nodeport_is_translated_tracked_and_its_replies_rewritten_back() {
    let mut tc = Tc::load();
    tc.external6((NODE6, NODE_PORT), PROTO_TCP, 7, 0, &[POD6_A]);
    let client = (CLIENT6, CLIENT_PORT);
    let syn = frame6(client, (NODE6, NODE_PORT), L4::Tcp { flags: TCP_SYN });
    assert_checksum6_valid(&syn);
    let v = tc.ingress(&syn);
    assert_dnat6(&v, &syn, (POD6_A, POD_PORT));
    let original = tc
        .conntrack6(ct_key6(client, (NODE6, NODE_PORT), PROTO_TCP))
        .expect("original-direction entry");
    assert_eq!(original.addr, words6(POD6_A));
    let reply = tc
        .conntrack6(ct_key6((POD6_A, POD_PORT), client, PROTO_TCP))
        .expect("reply-direction entry");
    assert_ne!(reply.flags & CT_FLAG_REPLY, 0);
    // The IPv4 map holds nothing of it.
    assert_eq!(tc.conntrack_len(), 0);

    // Later segments follow the flow; the reply leaves as the NodePort.
    let ack = frame6(client, (NODE6, NODE_PORT), L4::Tcp { flags: TCP_ACK });
    assert_dnat6(&tc.ingress(&ack), &ack, (POD6_A, POD_PORT));
    assert_syn_ack_leaves_as(&tc, (POD6_A, POD_PORT), client, (NODE6, NODE_PORT));
    let seen = tc
        .conntrack6(ct_key6((POD6_A, POD_PORT), client, PROTO_TCP))
        .expect("reply-direction entry");
    assert_ne!(seen.state & CT_STATE_SEEN, 0, "the answer is recorded");
}

#[test]
fn ipv6_udp_is_translated_both_ways_with_valid_checksums() {
    let mut tc = Tc::load();
    tc.external6((LB6, 53), PROTO_UDP, 4, 0, &[POD6_B]);
    let client = (CLIENT6, CLIENT_PORT);
    let query = frame6(client, (LB6, 53), L4::Udp { checksum: true });
    assert_dnat6(&tc.ingress(&query), &query, (POD6_B, POD_PORT));
    let answer = frame6((POD6_B, POD_PORT), client, L4::Udp { checksum: true });
    let v = tc.egress(&answer);
    assert_eq!(v.ret, TC_ACT_OK);
    assert_eq!(parse6(&v.frame), ((LB6, 53), client));
    assert_checksum6_valid(&v.frame);
}

#[test]
fn ipv6_client_ip_affinity_names_an_external_client_by_its_whole_address() {
    let mut tc = Tc::load();
    tc.external6(
        (NODE6, NODE_PORT),
        PROTO_UDP,
        9,
        SERVICE_FLAG_AFFINITY,
        &[POD6_A, POD6_B],
    );
    // A second client whose address folds to the first one's 64 bits (words 1 and 3 both
    // differ by the same bits): folded, the two would share one affinity entry.
    let twin = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0x101, 0, 0, 0, 0x106);
    for client in [CLIENT6, twin] {
        let first = frame6(
            (client, CLIENT_PORT),
            (NODE6, NODE_PORT),
            L4::Udp { checksum: true },
        );
        let chosen = parse6(&tc.ingress(&first).frame).1;
        for port in 1..16 {
            let f = frame6(
                (client, CLIENT_PORT + port),
                (NODE6, NODE_PORT),
                L4::Udp { checksum: true },
            );
            assert_dnat6(&tc.ingress(&f), &f, chosen);
        }
        let key = AffinityKey6 {
            client: words6(client),
            service_id: 9,
            scope: u32::from(SCOPE_EXTERNAL),
        };
        let remembered: AffinityValue6 = tc
            .hash::<AffinityKey6, AffinityValue6>(map_names::AFFINITY6)
            .get(&key, 0)
            .unwrap_or_else(|_| panic!("an affinity entry keyed by {client}"));
        assert_eq!(
            (remembered.backend.addr, remembered.backend.port),
            (words6(chosen.0), chosen.1.to_be())
        );
    }
    let entries = tc
        .hash::<AffinityKey6, AffinityValue6>(map_names::AFFINITY6)
        .keys()
        .count();
    assert_eq!(entries, 2, "one entry per client");
}

#[test]
fn ipv6_traffic_outside_services_and_behind_headers_that_are_not_walked_passes_untouched() {
    let mut tc = Tc::load();
    tc.external6((NODE6, NODE_PORT), PROTO_TCP, 7, 0, &[POD6_A]);
    let client = (CLIENT6, CLIENT_PORT);
    let syn = L4::Tcp { flags: TCP_SYN };
    let to_frontend = frame6(client, (NODE6, NODE_PORT), syn);
    let options = || (EXT_DEST_OPTIONS, extension(EXT_DEST_OPTIONS, 8, 0));
    for other in [
        // Another port, another protocol, another address.
        frame6(client, (NODE6, NODE_PORT + 1), syn),
        frame6(client, (NODE6, NODE_PORT), L4::Udp { checksum: true }),
        frame6(client, (LB6, NODE_PORT), syn),
        // A later fragment of a datagram to the frontend whose first fragment was not seen,
        // the frontend as a waypoint of a routing header with segments left, behind hop-by-hop
        // options that are not first (RFC 8200 4.3), and behind more headers than the
        // programs walk.
        fragments6(&to_frontend, 16, 0x0e0f)[1].clone(),
        with_extensions(
            &to_frontend,
            &[(EXT_ROUTING, extension(EXT_ROUTING, 24, 1))],
        ),
        with_extensions(
            &to_frontend,
            &[options(), (EXT_HOP_BY_HOP, extension(EXT_HOP_BY_HOP, 8, 0))],
        ),
        with_extensions(
            &to_frontend,
            &[options(), options(), options(), options(), options()],
        ),
    ] {
        assert_untouched(&tc.ingress(&other), &other);
        assert_untouched(&tc.egress(&other), &other);
    }
    // The IPv4 frontend of the same port number is not an IPv6 one.
    let v4 = frame(tcp((CLIENT, CLIENT_PORT), (NODE, NODE_PORT), TCP_SYN));
    assert_untouched(&tc.ingress(&v4), &v4);
}

/// Splits a whole IPv6 datagram's frame (no extension headers) into its first fragment (the
/// first `first_len` bytes of the upper layer, a multiple of 8) and its last, each behind a
/// fragment header with identification `id`, as the sender's stack fragments it.
fn fragments6(whole: &[u8], first_len: usize, id: u32) -> [Vec<u8>; 2] {
    assert_eq!(first_len % 8, 0);
    let upper = whole[ETH + 6];
    let part = |bytes: &[u8], offset_flags: u16| {
        let mut f = whole[..L4_OFF6].to_vec();
        f[ETH + 4..ETH + 6].copy_from_slice(&((8 + bytes.len()) as u16).to_be_bytes());
        f[ETH + 6] = EXT_FRAGMENT;
        f.extend_from_slice(&[upper, 0]);
        f.extend_from_slice(&offset_flags.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(bytes);
        f
    };
    let seg = &whole[L4_OFF6..];
    // The offset in 8-byte units sits above the three low bits; "more fragments" is bit 0.
    [
        part(&seg[..first_len], 1),
        part(&seg[first_len..], first_len as u16),
    ]
}

/// The whole IPv6 datagram the receiver reassembles from two fragments.
fn reassemble6(parts: &[Vec<u8>; 2]) -> Vec<u8> {
    let [first, last] = parts;
    assert_eq!(
        first[ETH + 8..L4_OFF6],
        last[ETH + 8..L4_OFF6],
        "same addresses"
    );
    assert_eq!(
        first[L4_OFF6 + 4..L4_OFF6 + 8],
        last[L4_OFF6 + 4..L4_OFF6 + 8],
        "same id"
    );
    let mut whole = first[..L4_OFF6].to_vec();
    let seg: Vec<u8> = [&first[L4_OFF6 + 8..], &last[L4_OFF6 + 8..]].concat();
    whole[ETH + 4..ETH + 6].copy_from_slice(&(seg.len() as u16).to_be_bytes());
    whole[ETH + 6] = first[L4_OFF6];
    whole.extend_from_slice(&seg);
    whole
}

/// A later IPv6 fragment leaves with only its addresses changed.
fn assert_later_fragment6(v: &Verdict, input: &[u8], src: Ipv6Addr, dst: Ipv6Addr) {
    assert_eq!(v.ret, TC_ACT_OK, "verdict");
    let f = &v.frame;
    let ip6 = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[o..o + 16]).unwrap());
    assert_eq!((ip6(ETH + 8), ip6(ETH + 24)), (src, dst), "addresses");
    assert_eq!(
        f[L4_OFF6..],
        input[L4_OFF6..],
        "fragment header and payload untouched"
    );
}

#[test]
fn ipv6_the_later_fragments_of_a_datagram_follow_its_first_fragment_both_ways() {
    let mut tc = Tc::load();
    tc.external6((LB6, 53), PROTO_UDP, 4, 0, &[POD6_B]);
    let client = (CLIENT6, 5353);
    let udp = L4::Udp { checksum: true };
    let parts = fragments6(&frame6(client, (LB6, 53), udp), 16, 0x0a0b_0c0d);
    let first = tc.ingress(&parts[0]);
    assert_eq!(first.ret, TC_ACT_OK);
    assert_eq!(
        parse6(&first.frame).1,
        (POD6_B, POD_PORT),
        "first fragment DNATed"
    );
    let later = tc.ingress(&parts[1]);
    assert_later_fragment6(&later, &parts[1], CLIENT6, POD6_B);
    let received = reassemble6(&[first.frame, later.frame]);
    assert_eq!(parse6(&received).1, (POD6_B, POD_PORT));
    assert_checksum6_valid(&received);

    let answer = frame6((POD6_B, POD_PORT), client, udp);
    let parts = fragments6(&answer, 24, 0x0102_0304);
    let first = tc.egress(&parts[0]);
    assert_eq!(
        parse6(&first.frame).0,
        (LB6, 53),
        "first fragment reverse-NATed"
    );
    let later = tc.egress(&parts[1]);
    assert_later_fragment6(&later, &parts[1], LB6, CLIENT6);
    let received = reassemble6(&[first.frame, later.frame]);
    assert_eq!(parse6(&received), ((LB6, 53), client));
    assert_checksum6_valid(&received);

    // Later fragments of datagrams whose first fragment was not seen pass as they are.
    let stray = fragments6(&frame6(client, (LB6, 53), udp), 16, 0x0bad)[1].clone();
    assert_untouched(&tc.ingress(&stray), &stray);
    let stray = fragments6(&answer, 24, 0x0bad)[1].clone();
    assert_untouched(&tc.egress(&stray), &stray);
}

#[test]
fn ipv6_the_later_fragments_of_a_refused_datagram_never_leave_for_a_service_address() {
    let bed = SnatBed::new();
    let (mut tc, node1, _) = bed.ipv6(SNAT_PORTS);
    // LB6 is no address of node1, which would route it on (its IPv6 default route).
    tc.external6((LB6, 53), PROTO_UDP, 1, 0, &[]);
    tc.external6((node1, 30095), PROTO_UDP, 2, 0, &[]);
    let client = (CLIENT6, 5353);
    for (frontend, later_verdict) in [((LB6, 53), TC_ACT_SHOT), ((node1, 30095), TC_ACT_OK)] {
        let datagram = frame6(client, frontend, L4::Udp { checksum: true });
        let parts = fragments6(&datagram, 16, 0x0d0d_0005);
        let first = bed.ingress(&tc, &parts[0]);
        assert_eq!(first.ret, TC_ACT_REDIRECT, "the first fragment is refused");
        assert_eq!(
            (
                first.frame[ETH + 6],
                first.frame[L4_OFF6],
                first.frame[L4_OFF6 + 1]
            ),
            (ICMPV6, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH),
            "with a port unreachable"
        );
        assert_later_fragment_kept(&bed.ingress(&tc, &parts[1]), &parts[1], later_verdict);
    }
    assert_eq!(tc.conntrack6_len(), 0);
}

/// Hop-by-hop options, destination options and a routing header with no segments left: the
/// longest chain the programs walk.
fn walked_extensions() -> Vec<(u8, Vec<u8>)> {
    vec![
        (EXT_HOP_BY_HOP, extension(EXT_HOP_BY_HOP, 8, 0)),
        (EXT_DEST_OPTIONS, extension(EXT_DEST_OPTIONS, 16, 0)),
        (EXT_ROUTING, extension(EXT_ROUTING, 24, 0)),
        (EXT_DEST_OPTIONS, extension(EXT_DEST_OPTIONS, 8, 0)),
    ]
}

#[test]
fn ipv6_tcp_and_udp_behind_extension_headers_are_translated_with_the_headers_kept() {
    let mut tc = Tc::load();
    tc.external6((NODE6, NODE_PORT), PROTO_TCP, 7, 0, &[POD6_A]);
    tc.external6((LB6, 53), PROTO_UDP, 4, 0, &[POD6_B]);
    let client = (CLIENT6, CLIENT_PORT);
    let chain = walked_extensions();
    let chain_len: usize = chain.iter().map(|(_, h)| h.len()).sum();
    for (plain, backend) in [
        (
            frame6(client, (NODE6, NODE_PORT), L4::Tcp { flags: TCP_SYN }),
            (POD6_A, POD_PORT),
        ),
        (
            frame6(client, (LB6, 53), L4::Udp { checksum: true }),
            (POD6_B, POD_PORT),
        ),
    ] {
        let request = with_extensions(&plain, &chain);
        assert_checksum6_valid(&request);
        let v = tc.ingress(&request);
        assert_dnat6(&v, &request, backend);
        assert_eq!(
            v.frame[ETH + 6..ETH + 8],
            request[ETH + 6..ETH + 8],
            "next header and hop limit kept"
        );
        assert_eq!(
            v.frame[L4_OFF6..L4_OFF6 + chain_len],
            request[L4_OFF6..L4_OFF6 + chain_len],
            "extension headers kept"
        );
    }
    // The flow is tracked as without the headers: a reply leaves as the frontend, and a
    // later segment without them follows the flow.
    let tracked = tc
        .conntrack6(ct_key6(client, (NODE6, NODE_PORT), PROTO_TCP))
        .expect("original-direction entry");
    assert_eq!(tracked.addr, words6(POD6_A));
    assert_syn_ack_leaves_as(&tc, (POD6_A, POD_PORT), client, (NODE6, NODE_PORT));
    let ack = frame6(client, (NODE6, NODE_PORT), L4::Tcp { flags: TCP_ACK });
    assert_dnat6(&tc.ingress(&ack), &ack, (POD6_A, POD_PORT));
}

#[test]
fn ipv6_requests_behind_extension_headers_to_frontends_without_endpoints_are_refused() {
    let mut tc = Tc::load();
    tc.external6((NODE6, NODE_PORT), PROTO_TCP, 8, 0, &[]);
    tc.external6((NODE6, 53), PROTO_UDP, 9, 0, &[]);
    let client = (CLIENT6, CLIENT_PORT);
    let chain = walked_extensions();

    let syn = frame6(client, (NODE6, NODE_PORT), L4::Tcp { flags: TCP_SYN });
    let v = tc.ingress(&with_extensions(&syn, &chain));
    assert_eq!(v.ret, TC_ACT_REDIRECT, "sent back out");
    let f = &v.frame;
    assert_eq!(
        f.len(),
        L4_OFF6 + 20,
        "a plain IPv6 header and the RST only"
    );
    assert_eq!(f[ETH + 6], PROTO_TCP, "next header");
    assert_eq!(
        u16::from_be_bytes([f[ETH + 4], f[ETH + 5]]),
        20,
        "payload length"
    );
    assert_eq!(parse6(f), ((NODE6, NODE_PORT), client), "from the frontend");
    assert_eq!(f[L4_OFF6 + 13], TCP_RST | TCP_ACK);
    assert_eq!(
        f[L4_OFF6 + 8..L4_OFF6 + 12],
        0x0102_0304u32
            .wrapping_add(1 + PAYLOAD.len() as u32)
            .to_be_bytes(),
        "acknowledges the SYN and its data"
    );
    assert_checksum6_valid(f);

    let datagram = frame6(client, (NODE6, 53), L4::Udp { checksum: true });
    let v = tc.ingress(&with_extensions(&datagram, &chain));
    assert_eq!(v.ret, TC_ACT_REDIRECT, "sent back out");
    let f = &v.frame;
    assert_eq!(f.len(), L4_OFF6 + 8 + 48, "IPv6, ICMPv6 and the quote only");
    assert_eq!(f[ETH + 6], 58, "ICMPv6");
    assert_eq!((parse6(f).0 .0, parse6(f).1 .0), (NODE6, CLIENT6));
    assert_eq!((f[L4_OFF6], f[L4_OFF6 + 1]), (1, 4), "port unreachable");
    assert_eq!(
        f[L4_OFF6 + 8..],
        datagram[ETH..ETH + 48],
        "quotes the datagram's IPv6 and UDP headers as without the options"
    );
    assert_checksum6_valid(f);
}

#[test]
fn ipv6_source_ranges_allow_listed_clients_and_drop_the_rest() {
    let mut tc = Tc::load();
    tc.external6(
        (LB6, 443),
        PROTO_TCP,
        5,
        SERVICE_FLAG_SOURCE_RANGES,
        &[POD6_A],
    );
    let mut trie: LpmTrie<&mut MapData, SourceRangeKey6, u8> =
        LpmTrie::try_from(tc.ebpf.map_mut(map_names::SOURCE_RANGES6).unwrap()).unwrap();
    let allowed = Key::new(
        128 + 64,
        SourceRangeKey6 {
            lb_addr: words6(LB6),
            client_addr: words6(CLIENT6),
        },
    );
    trie.insert(&allowed, 1, 0).expect("insert source range");
    let syn = L4::Tcp { flags: TCP_SYN };
    let near = frame6((CLIENT6, CLIENT_PORT), (LB6, 443), syn);
    assert_dnat6(&tc.ingress(&near), &near, (POD6_A, POD_PORT));
    let far = frame6((FAR_CLIENT6, CLIENT_PORT), (LB6, 443), syn);
    assert_eq!(
        tc.ingress(&far).ret,
        TC_ACT_SHOT,
        "outside the ranges: dropped"
    );
}

#[test]
fn ipv6_frontends_without_endpoints_drop_with_drop_empty() {
    let mut tc = Tc::load();
    tc.external6(
        (NODE6, NODE_PORT),
        PROTO_TCP,
        8,
        SERVICE_FLAG_DROP_EMPTY,
        &[],
    );
    let syn = frame6(
        (CLIENT6, CLIENT_PORT),
        (NODE6, NODE_PORT),
        L4::Tcp { flags: TCP_SYN },
    );
    assert_eq!(tc.ingress(&syn).ret, TC_ACT_SHOT);
    assert!(tc
        .conntrack6(ct_key6(
            (CLIENT6, CLIENT_PORT),
            (NODE6, NODE_PORT),
            PROTO_TCP
        ))
        .is_none());
}

#[test]
fn ipv6_frontends_without_endpoints_are_refused_with_a_reset_or_icmpv6_port_unreachable() {
    let mut tc = Tc::load();
    tc.external6((NODE6, NODE_PORT), PROTO_TCP, 8, 0, &[]);
    tc.external6((NODE6, 53), PROTO_UDP, 9, 0, &[]);
    let client = (CLIENT6, CLIENT_PORT);

    // A SYN carrying data (TCP Fast Open; the builder's segments carry a payload), and the
    // same SYN without: the RST is the headers only, acknowledging the SYN and its data.
    let fast_open = frame6(client, (NODE6, NODE_PORT), L4::Tcp { flags: TCP_SYN });
    let mut syn = fast_open[..L4_OFF6 + 20].to_vec();
    syn[ETH + 4..ETH + 6].copy_from_slice(&20u16.to_be_bytes());
    syn[L4_OFF6 + 16..L4_OFF6 + 18].copy_from_slice(&[0, 0]);
    let csum = l4_csum6(CLIENT6, NODE6, PROTO_TCP, &syn[L4_OFF6..]);
    syn[L4_OFF6 + 16..L4_OFF6 + 18].copy_from_slice(&csum.to_be_bytes());
    for (request, data_len) in [(&fast_open, PAYLOAD.len()), (&syn, 0)] {
        assert_checksum6_valid(request);
        let v = tc.ingress(request);
        assert_eq!(
            v.ret, TC_ACT_REDIRECT,
            "sent back out ({data_len} bytes of data)"
        );
        let f = &v.frame;
        assert_eq!(f.len(), L4_OFF6 + 20, "headers only");
        assert_eq!(f[..6], request[6..12], "to the sender's MAC");
        assert_eq!(parse6(f), ((NODE6, NODE_PORT), client), "from the frontend");
        assert_eq!(
            u16::from_be_bytes([f[ETH + 4], f[ETH + 5]]),
            20,
            "payload length"
        );
        let tcp = &f[L4_OFF6..];
        let seq = u32::from_be_bytes([
            request[L4_OFF6 + 4],
            request[L4_OFF6 + 5],
            request[L4_OFF6 + 6],
            request[L4_OFF6 + 7],
        ]);
        assert_eq!(tcp[4..8], [0, 0, 0, 0], "sequence number 0");
        assert_eq!(
            tcp[8..12],
            seq.wrapping_add(1 + data_len as u32).to_be_bytes(),
            "acknowledges the SYN and its data"
        );
        assert_eq!(tcp[13], TCP_RST | TCP_ACK);
        assert_checksum6_valid(f);
    }

    let datagram = frame6(client, (NODE6, 53), L4::Udp { checksum: true });
    let v = tc.ingress(&datagram);
    assert_eq!(v.ret, TC_ACT_REDIRECT, "sent back out");
    let mut f = v.frame.clone();
    assert_eq!(f.len(), L4_OFF6 + 8 + 48, "IPv6, ICMPv6 and the quote only");
    assert_eq!(f[ETH + 6], 58, "ICMPv6");
    assert_eq!(parse6(&f).0 .0, NODE6);
    assert_eq!(parse6(&f).1 .0, CLIENT6);
    assert_eq!((f[L4_OFF6], f[L4_OFF6 + 1]), (1, 4), "port unreachable");
    assert_eq!(
        f[L4_OFF6 + 8..],
        datagram[ETH..ETH + 48],
        "quotes the datagram's IPv6 and UDP headers"
    );
    assert_checksum6_valid(&f);
    // A CHECKSUM_PARTIAL request's device writes the message's sum where the UDP checksum
    // was (the unused word's second half): the ICMPv6 checksum stays valid.
    let device = !fold(sum16(&f[L4_OFF6..]));
    f[L4_OFF6 + 6..L4_OFF6 + 8].copy_from_slice(&device.to_be_bytes());
    assert_checksum6_valid(&f);
    assert_eq!(tc.conntrack_len(), 0);
}

#[test]
fn ipv6_port_unreachable_answers_are_rate_limited_per_whole_client_address() {
    let mut tc = Tc::load();
    tc.external6((NODE6, 53), PROTO_UDP, 9, 0, &[]);
    // The kernel's defaults (icmp_ratelimit 1000 ms, icmp_msgs_per_sec 1000, burst 50).
    tc.refusal_limits(RefusalLimits {
        client_interval_ns: 1_000_000_000,
        client_burst_ns: 6_000_000_000,
        global_interval_ns: 1_000_000,
        global_burst_ns: 50_000_000,
    });
    let answered = |tc: &Tc, client: Ipv6Addr, count: usize| {
        (0..count)
            .filter(|_| {
                let datagram = frame6((client, 5353), (NODE6, 53), L4::Udp { checksum: true });
                match tc.ingress(&datagram).ret {
                    TC_ACT_REDIRECT => true,
                    TC_ACT_SHOT => false,
                    other => panic!("verdict {other}"),
                }
            })
            .count()
    };
    // A burst of 6 per client, then one a second (this loop takes far less).
    let first = answered(&tc, CLIENT6, 20);
    assert!((6..=7).contains(&first), "{first} of 20 datagrams answered");
    // Words 1 and 2 differ from CLIENT6's by the same bit: folded to 32 bits, the two
    // clients would share one bucket.
    let twin = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 1, 0, 1, 0, 0x7);
    let fold = |ip: Ipv6Addr| words6(ip).iter().fold(0, |a, w| a ^ w);
    assert_eq!(fold(twin), fold(CLIENT6));
    assert_eq!(
        answered(&tc, twin, 6),
        6,
        "another client has its own burst"
    );
}

#[test]
fn ipv6_masquerade_flow_to_a_remote_backend_is_source_natted_and_its_reply_rewritten_back() {
    let bed = SnatBed::new();
    let (mut tc, node1, remote) = bed.ipv6(SNAT_PORTS);
    tc.external6(
        (node1, NODE_PORT),
        PROTO_TCP,
        9,
        SERVICE_FLAG_MASQUERADE,
        &[remote],
    );
    let client = (CLIENT6, CLIENT_PORT);
    let syn = frame6(client, (node1, NODE_PORT), L4::Tcp { flags: TCP_SYN });
    let v = bed.ingress(&tc, &syn);
    assert_eq!(
        v.ret, TC_ACT_REDIRECT,
        "leaves by redirect, not up the stack"
    );
    let (src, dst) = parse6(&v.frame);
    assert_eq!(dst, (remote, POD_PORT), "to the remote backend");
    assert_eq!(src.0, node1, "from the node's IPv6 address");
    assert!(
        SNAT_PORTS.contains(&src.1),
        "a port of the NAT range: {}",
        src.1
    );
    assert_checksum6_valid(&v.frame);

    // The backend's reply to node:port is found before the service lookup and leaves as the
    // frontend, towards the client.
    let syn_ack = frame6(
        (remote, POD_PORT),
        src,
        L4::Tcp {
            flags: TCP_SYN | TCP_ACK,
        },
    );
    let v = bed.ingress(&tc, &syn_ack);
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    assert_eq!(parse6(&v.frame), ((node1, NODE_PORT), client));
    assert_checksum6_valid(&v.frame);
    let forward = tc
        .conntrack6(ct_key6(client, (node1, NODE_PORT), PROTO_TCP))
        .expect("forward entry");
    assert_ne!(forward.flags & CT_FLAG_SNAT, 0);
    assert_eq!(
        (forward.nat_addr, u16::from_be(forward.nat_port)),
        (words6(node1), src.1)
    );
}

/// As [`an_ended_flows_source_nat_port_goes_to_a_new_flow_and_a_live_flows_never_does`], for
/// IPv6 (`snat_reuse::take_ended6`).
#[test]
fn ipv6_an_ended_flows_source_nat_port_goes_to_a_new_flow_and_a_live_flows_never_does() {
    let bed = SnatBed::new();
    // One port: every new flow needs the one flow before it to have ended.
    const PORT: u16 = 40000;
    let (mut tc, node1, remote) = bed.ipv6(PORT..=PORT);
    let frontend = (node1, NODE_PORT);
    tc.external6(frontend, PROTO_TCP, 9, SERVICE_FLAG_MASQUERADE, &[remote]);
    let (first, second) = ((CLIENT6, CLIENT_PORT), (FAR_CLIENT6, CLIENT_PORT));
    let (backend, nat) = ((remote, POD_PORT), (node1, PORT));
    let segment = |src: End6, dst: End6, flags: u8| frame6(src, dst, L4::Tcp { flags });
    let v = bed.ingress(&tc, &segment(first, frontend, TCP_SYN));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    assert_eq!(parse6(&v.frame).0, nat);
    let keys = [
        ct_key6(first, frontend, PROTO_TCP),
        ct_key6(backend, nat, PROTO_TCP),
    ];
    let age = |tc: &mut Tc, keys| age_flow_of::<CtKey6, CtValue6>(tc, keys);
    let reply = |tc: &Tc, flags: u8| {
        let v = bed.ingress(tc, &segment(backend, nat, flags));
        assert_eq!(v.ret, TC_ACT_REDIRECT, "reply of the first flow translated");
        assert_eq!(parse6(&v.frame).1, first);
    };
    reply(&tc, TCP_SYN | TCP_ACK);
    let syn = segment(second, frontend, TCP_SYN);

    // Open, even when idle for long: its port stays its own.
    age(&mut tc, keys);
    assert_eq!(bed.ingress(&tc, &syn).ret, TC_ACT_SHOT, "open flow kept");
    // Half closed (the client's FIN only): still its own.
    let v = bed.ingress(&tc, &segment(first, frontend, TCP_FIN | TCP_ACK));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    age(&mut tc, keys);
    assert_eq!(
        bed.ingress(&tc, &syn).ret,
        TC_ACT_SHOT,
        "half-closed flow kept"
    );
    // Closed both ways, but its last packets just passed: not yet.
    reply(&tc, TCP_FIN | TCP_ACK);
    assert_eq!(
        bed.ingress(&tc, &syn).ret,
        TC_ACT_SHOT,
        "closed flow not quiet yet"
    );

    // Closed and quiet: the new flow gets the port, and the old flow's entries are gone.
    age(&mut tc, keys);
    let v = bed.ingress(&tc, &syn);
    assert_eq!(v.ret, TC_ACT_REDIRECT, "ended flow's port reused");
    assert_eq!(parse6(&v.frame), (nat, backend));
    assert_checksum6_valid(&v.frame);
    assert_eq!(
        tc.conntrack6(keys[0]),
        None,
        "old original-direction entry deleted"
    );
    let taken = tc.conntrack6(keys[1]).expect("reply entry");
    assert_eq!(
        (taken.nat_addr, taken.nat_port, taken.state),
        (words6(second.0), second.1.to_be(), 0),
        "reply entry now the new flow's"
    );
    assert_eq!(tc.conntrack6_len(), 2);
    let v = bed.ingress(&tc, &segment(backend, nat, TCP_SYN | TCP_ACK));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    assert_eq!(
        parse6(&v.frame),
        (frontend, second),
        "the backend's reply goes to the new client"
    );

    // A reset ends a flow too.
    let v = bed.ingress(&tc, &segment(second, frontend, TCP_RST));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    age(&mut tc, [ct_key6(second, frontend, PROTO_TCP), keys[1]]);
    let v = bed.ingress(&tc, &segment(first, frontend, TCP_SYN));
    assert_eq!(v.ret, TC_ACT_REDIRECT, "reset flow's port reused");
    assert_eq!(tc.conntrack6(ct_key6(second, frontend, PROTO_TCP)), None);
}

// ---------------------------------------------------------------------------------------------
// ICMPv6 errors about translated IPv6 flows

/// A router between the client and the node, or between the node and a backend.
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 0x1);
const ICMPV6: u8 = 58;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_PARAMPROB: u8 = 4;
const ICMPV6_PORT_UNREACH: u8 = 4;
const QUOTE6: usize = L4_OFF6 + 8;

/// An ICMPv6 error (`icmp_type`, `code`, the 4 bytes after the checksum) from `from` to `to`
/// quoting `quoted` (an IPv6 packet, whole or cut), with a correct checksum.
fn icmp6_error(
    from: Ipv6Addr,
    to: Ipv6Addr,
    kind: (u8, u8),
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind.0, kind.1, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quoted);
    let csum = !fold(icmp6_pseudo_sum(from, to, icmp.len()) + sum16(&icmp));
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x03]);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[ICMPV6, 64]);
    f.extend_from_slice(&from.octets());
    f.extend_from_slice(&to.octets());
    f.extend_from_slice(&icmp);
    f
}

fn icmp6_pseudo_sum(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> u32 {
    sum16(&src.octets()) + sum16(&dst.octets()) + len as u32 + u32::from(ICMPV6)
}

fn parse_icmp6(f: &[u8]) -> IcmpParsed<Ipv6Addr> {
    let ip6 = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[o..o + 16]).unwrap());
    let be16 = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    assert_eq!(f[ETH + 6], ICMPV6, "ICMPv6");
    IcmpParsed {
        src: ip6(ETH + 8),
        dst: ip6(ETH + 24),
        icmp_type: f[L4_OFF6],
        code: f[L4_OFF6 + 1],
        rest: [
            f[L4_OFF6 + 4],
            f[L4_OFF6 + 5],
            f[L4_OFF6 + 6],
            f[L4_OFF6 + 7],
        ],
        quoted_src: (ip6(QUOTE6 + 8), be16(QUOTE6 + 40)),
        quoted_dst: (ip6(QUOTE6 + 24), be16(QUOTE6 + 42)),
    }
}

/// The ICMPv6 checksum (over its pseudo header) and, when the quote holds the whole segment,
/// the quoted TCP/UDP checksum are valid.
fn assert_icmp6_checksums_valid(f: &[u8]) {
    let out = parse_icmp6(f);
    let icmp = &f[L4_OFF6..];
    assert_eq!(
        fold(icmp6_pseudo_sum(out.src, out.dst, icmp.len()) + sum16(icmp)),
        0xffff,
        "ICMPv6 checksum"
    );
    let quote = &f[QUOTE6..];
    let seg_len = usize::from(u16::from_be_bytes([quote[4], quote[5]]));
    if quote.len() < IP6_HLEN + seg_len {
        return;
    }
    let proto = quote[6];
    let seg = &quote[IP6_HLEN..IP6_HLEN + seg_len];
    let sum = sum16(&out.quoted_src.0.octets())
        + sum16(&out.quoted_dst.0.octets())
        + seg_len as u32
        + u32::from(proto)
        + sum16(seg);
    assert_eq!(fold(sum), 0xffff, "quoted L4 checksum of proto {proto}");
}

/// The rest of a packet too big header: the MTU, 1280.
const MTU6_1280: [u8; 4] = [0, 0, 0x05, 0x00];

#[test]
fn ipv6_errors_about_a_reply_reach_the_local_backend_as_about_the_backends_own_packet() {
    let mut tc = Tc::load();
    tc.external6((NODE6, NODE_PORT), PROTO_TCP, 7, 0, &[POD6_A]);
    let client = (CLIENT6, CLIENT_PORT);
    let syn = frame6(client, (NODE6, NODE_PORT), L4::Tcp { flags: TCP_SYN });
    assert_dnat6(&tc.ingress(&syn), &syn, (POD6_A, POD_PORT));
    // A router in front of the client cannot forward a reply as it left the node
    // (frontend -> client): packet too big, the whole segment quoted or only its ports'
    // 8 bytes; and the other error types, each with the whole segment.
    let reply = frame6(
        (NODE6, NODE_PORT),
        client,
        L4::Tcp {
            flags: TCP_ACK | TCP_PSH,
        },
    );
    let cases = [
        ((ICMPV6_PKT_TOOBIG, 0), MTU6_1280, &reply[ETH..]),
        ((ICMPV6_PKT_TOOBIG, 0), MTU6_1280, &reply[ETH..L4_OFF6 + 8]),
        ((ICMPV6_DEST_UNREACH, 3), [0; 4], &reply[ETH..]),
        ((ICMPV6_TIME_EXCEED, 0), [0; 4], &reply[ETH..]),
        ((ICMPV6_PARAMPROB, 0), [0, 0, 0, 6], &reply[ETH..]),
    ];
    for (kind, rest, quoted) in cases {
        let error = icmp6_error(ROUTER6, NODE6, kind, rest, quoted);
        assert_icmp6_checksums_valid(&error);
        let v = tc.ingress(&error);
        assert_eq!(v.ret, TC_ACT_OK, "the kernel routes it to the pod");
        let out = parse_icmp6(&v.frame);
        assert_eq!((out.src, out.dst), (ROUTER6, POD6_A), "to the backend");
        assert_eq!(
            (out.quoted_src, out.quoted_dst),
            ((POD6_A, POD_PORT), client),
            "about the backend's packet"
        );
        assert_eq!((out.icmp_type, out.code, out.rest), (kind.0, kind.1, rest));
        assert_eq!(v.frame.len(), error.len());
        assert_icmp6_checksums_valid(&v.frame);
    }
    // An error about a packet of no tracked flow, or of another type, is not touched.
    let other = frame6(
        (NODE6, NODE_PORT),
        (CLIENT6, CLIENT_PORT + 1),
        L4::Tcp { flags: TCP_ACK },
    );
    let error = icmp6_error(
        ROUTER6,
        NODE6,
        (ICMPV6_PKT_TOOBIG, 0),
        MTU6_1280,
        &other[ETH..],
    );
    assert_untouched(&tc.ingress(&error), &error);
    assert_untouched(&tc.egress(&error), &error);
    let echo = icmp6_error(ROUTER6, NODE6, (129, 0), [0; 4], &reply[ETH..]);
    assert_untouched(&tc.ingress(&echo), &echo);
}

#[test]
fn ipv6_errors_quoting_a_first_fragment_or_behind_extension_headers_are_translated() {
    let mut tc = Tc::load();
    tc.external6((LB6, 53), PROTO_UDP, 4, 0, &[POD6_B]);
    let client = (CLIENT6, 5353);
    let udp = L4::Udp { checksum: true };
    let query = frame6(client, (LB6, 53), udp);
    assert_dnat6(&tc.ingress(&query), &query, (POD6_B, POD_PORT));
    // The backend's long answer left the node fragmented, as frontend -> client; a router in
    // front of the client has a smaller MTU and quotes the first fragment. The backend must
    // get it as about its own packet: exactly the first fragment it sent.
    let id = 0x5151_0001;
    let sent = fragments6(&frame6((POD6_B, POD_PORT), client, udp), 16, id);
    let left = fragments6(&frame6((LB6, 53), client, udp), 16, id);
    let about_sent = icmp6_error(
        ROUTER6,
        POD6_B,
        (ICMPV6_PKT_TOOBIG, 0),
        MTU6_1280,
        &sent[0][ETH..],
    );
    let error = icmp6_error(
        ROUTER6,
        LB6,
        (ICMPV6_PKT_TOOBIG, 0),
        MTU6_1280,
        &left[0][ETH..],
    );
    let v = tc.ingress(&error);
    assert_eq!(v.ret, TC_ACT_OK);
    assert_eq!(
        v.frame, about_sent,
        "to the backend, quoting its own first fragment"
    );

    // The same error behind a destination options header (outside the quote): translated
    // alike, the header kept.
    let options = [(EXT_DEST_OPTIONS, extension(EXT_DEST_OPTIONS, 8, 0))];
    let error = with_extensions(
        &icmp6_error(
            ROUTER6,
            LB6,
            (ICMPV6_PKT_TOOBIG, 0),
            MTU6_1280,
            &frame6((LB6, 53), client, udp)[ETH..],
        ),
        &options,
    );
    let about_sent = with_extensions(
        &icmp6_error(
            ROUTER6,
            POD6_B,
            (ICMPV6_PKT_TOOBIG, 0),
            MTU6_1280,
            &frame6((POD6_B, POD_PORT), client, udp)[ETH..],
        ),
        &options,
    );
    let v = tc.ingress(&error);
    assert_eq!(v.ret, TC_ACT_OK);
    assert_eq!(v.frame, about_sent, "behind the header, to the backend");

    // An error quoting a later fragment has no ports to match: untouched.
    let error = icmp6_error(
        ROUTER6,
        LB6,
        (ICMPV6_PKT_TOOBIG, 0),
        MTU6_1280,
        &left[1][ETH..],
    );
    assert_untouched(&tc.ingress(&error), &error);
}

#[test]
fn ipv6_an_error_from_a_local_backend_leaves_as_coming_from_the_frontend() {
    let mut tc = Tc::load();
    tc.external6((LB6, 53), PROTO_UDP, 9, 0, &[POD6_A]);
    let client = (CLIENT6, 5353);
    let query = frame6(client, (LB6, 53), L4::Udp { checksum: true });
    assert_dnat6(&tc.ingress(&query), &query, (POD6_A, POD_PORT));
    // Nothing listens in the pod: it refuses the datagram as it got it (client -> pod).
    let translated = frame6(client, (POD6_A, POD_PORT), L4::Udp { checksum: true });
    let error = icmp6_error(
        POD6_A,
        CLIENT6,
        (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH),
        [0; 4],
        &translated[ETH..],
    );
    let v = tc.egress(&error);
    assert_eq!(v.ret, TC_ACT_OK);
    let out = parse_icmp6(&v.frame);
    assert_eq!((out.src, out.dst), (LB6, CLIENT6), "from the frontend");
    assert_eq!(
        (out.quoted_src, out.quoted_dst),
        (client, (LB6, 53)),
        "about the datagram the client sent"
    );
    assert_icmp6_checksums_valid(&v.frame);
    // Ingress leaves such an error alone (it is not about a reply).
    assert_untouched(&tc.ingress(&error), &error);
}

#[test]
fn ipv6_packet_too_big_about_a_source_natted_flow_is_translated_both_ways() {
    let bed = SnatBed::new();
    let (mut tc, node1, remote) = bed.ipv6(SNAT_PORTS);
    let frontend = (node1, NODE_PORT);
    tc.external6(frontend, PROTO_TCP, 9, SERVICE_FLAG_MASQUERADE, &[remote]);
    let client = (CLIENT6, CLIENT_PORT);
    let v = bed.ingress(&tc, &frame6(client, frontend, L4::Tcp { flags: TCP_SYN }));
    assert_eq!(v.ret, TC_ACT_REDIRECT);
    let nat = parse6(&v.frame).0;
    let backend = (remote, POD_PORT);
    let data = L4::Tcp {
        flags: TCP_ACK | TCP_PSH,
    };

    // From the client's side, about a reply (frontend -> client): on to the backend, as an
    // error about its packet to node:port, from the node.
    let reply = frame6(frontend, client, data);
    let error = icmp6_error(
        ROUTER6,
        node1,
        (ICMPV6_PKT_TOOBIG, 0),
        MTU6_1280,
        &reply[ETH..],
    );
    let v = bed.ingress(&tc, &error);
    assert_eq!(v.ret, TC_ACT_REDIRECT, "redirected like the flow's packets");
    let out = parse_icmp6(&v.frame);
    assert_eq!((out.src, out.dst), (node1, remote));
    assert_eq!((out.quoted_src, out.quoted_dst), (backend, nat));
    assert_eq!(out.rest, MTU6_1280, "the MTU is kept");
    assert_icmp6_checksums_valid(&v.frame);

    // From the backend's side (a router on the way to it), about a packet sent to it
    // (node:port -> backend): back to the client, as about its packet to the frontend, from
    // the frontend; the quote cut after the ports.
    let forwarded = frame6(nat, backend, data);
    for quoted in [&forwarded[ETH..], &forwarded[ETH..L4_OFF6 + 8]] {
        let error = icmp6_error(remote, node1, (ICMPV6_PKT_TOOBIG, 0), MTU6_1280, quoted);
        let v = bed.ingress(&tc, &error);
        assert_eq!(v.ret, TC_ACT_REDIRECT, "redirected towards the client");
        let out = parse_icmp6(&v.frame);
        assert_eq!((out.src, out.dst), (node1, CLIENT6));
        assert_eq!((out.quoted_src, out.quoted_dst), (client, frontend));
        assert_eq!((out.icmp_type, out.rest), (ICMPV6_PKT_TOOBIG, MTU6_1280));
        assert_eq!(v.frame.len(), error.len());
        assert_icmp6_checksums_valid(&v.frame);
    }
}
