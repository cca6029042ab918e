//! Per-packet cost of the tc programs, with BPF_PROG_TEST_RUN: the kernel runs a program on
//! a crafted frame `repeat` times and reports the mean time of one run, in ns.
//!
//! Nothing is attached anywhere: a private copy of the kernel object is loaded (own maps, at
//! their production sizes), the maps are filled as the controller would fill them for N
//! ClusterIP services with 10 backends each, and the programs run on frames in the kernel's
//! test harness, which delivers them nowhere.
//!
//! The kernel reuses one skb for all repeats, so a program that rewrites the frame sees its
//! own output on the next run. The translated cases therefore use two frontends that are
//! each other's backend (flow entries A -> B and B -> A): every run is a conntrack hit with a
//! full rewrite of address, port and checksums, and after an even number of runs the frame is
//! back where it started, which is checked. A new flow (SYN) cannot be repeated that way (the
//! second run would find the flow); it is measured one run per call on fresh source ports,
//! less the harness's per-call overhead (one-run calls minus `repeat` runs of the miss case).
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use aya::maps::{Array, HashMap, MapData};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader, TestRun, TestRunOptions};
use serde::Serialize;
use switchyard_common::{
    map_names, program_names, Backend, BackendKey, CtKey, CtValue, ServiceKey, ServiceValue,
    SnatConfig, CT_FLAG_REPLY, PROTO_TCP, SCOPE_EXTERNAL, SCOPE_SOCKET,
};

use crate::controlplane::cluster;

/// `TC_ACT_OK`: the verdict of every case (the packet goes on, possibly rewritten).
const TC_ACT_OK: u32 = 0;

/// Backends per generated service, as in the dataplane sandboxes.
const BACKENDS_PER_SERVICE: u32 = 10;

/// Backend-set id of the first generated service (the frontends A and B have 1 and 2).
const FIRST_GENERATED_ID: u32 = 100;

/// Timed runs per case; the median is reported.
const SAMPLES: usize = 5;

// The translated flow: an external client, and two frontends that are each other's backend.
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(203, 0, 113, 10), 40001);
const FRONT_A: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 0, 11), 30080);
const FRONT_B: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 19, 2, 11), 8080);
// Pod-to-pod traffic that is no service: a request (port below the source-NAT range) and
// its reply (to the client's ephemeral port, inside the range).
const POD_CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 19, 1, 11), 45000);
const POD_SERVER: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 19, 2, 12), 8080);
/// Source-NAT port range as the controller writes it for the default NodePort range.
const SNAT_PORTS: (u16, u16) = (32768, 65535);
/// Most new flows measured (each takes a client port from 10000 up).
const MAX_NEW_FLOWS: usize = 30_000;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// ClusterIP services in the maps (10 backends each).
    pub services: usize,
    /// Which program and packet.
    pub case: &'static str,
    /// Mean cost of one run, ns (median of the samples).
    pub ns_per_packet: f64,
    /// How it was measured.
    pub method: String,
    /// Every sample, ns.
    pub samples: Vec<f64>,
}

/// Where `cargo xtask build` puts the kernel object.
pub fn object_path() -> PathBuf {
    let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
    benches
        .parent()
        .unwrap_or(benches)
        .join("target/bpf/bpfel-unknown-none/release/switchyard-ebpf")
}

/// Measures every case at each service count. `repeat` runs per timed call; `new_flows` SYNs
/// (one call each) for the new-flow case.
pub fn measure(services: &[usize], repeat: u32, new_flows: usize) -> anyhow::Result<Vec<Case>> {
    let path = object_path();
    let object = std::fs::read(&path).with_context(|| {
        format!(
            "reading the eBPF object {} (cargo xtask build)",
            path.display()
        )
    })?;
    let mut cases = Vec::new();
    for &n in services {
        let mut tc = Tc::load(&object)?;
        tc.fill(n)?;
        // An even count brings the ping-pong frames back to where they started; the new
        // flows' client ports (10000 upwards) stay below the ping-pong client's.
        cases.extend(tc.cases(n, repeat.max(2) & !1, new_flows.clamp(1, MAX_NEW_FLOWS))?);
    }
    Ok(cases)
}

fn be(addr: Ipv4Addr) -> u32 {
    u32::from(addr).to_be()
}

fn ct_key(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> CtKey {
    CtKey {
        src_addr: be(src.0),
        dst_addr: be(dst.0),
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        proto: PROTO_TCP,
        pad: [0; 3],
    }
}

struct Tc {
    ebpf: Ebpf,
}

impl Tc {
    fn load(object: &[u8]) -> anyhow::Result<Self> {
        // The socket iterator's kfunc call must be neutralised (no iterator is loaded here)
        // before aya relocates the object.
        let prepared = switchyard::ebpf::sock_term::prepare_object(object, None);
        let mut ebpf = EbpfLoader::new()
            .load(prepared.bytes())
            .context("loading the eBPF object (needs root)")?;
        for name in [program_names::TC_INGRESS, program_names::TC_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name} in the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(Self { ebpf })
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> anyhow::Result<HashMap<&mut MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("no map {name}"))?;
        Ok(HashMap::try_from(map)?)
    }

    /// The maps of `n` ClusterIP services (socket scope, which the tc programs never match
    /// but whose entries share the table) plus the two external frontends and the source-NAT
    /// range.
    fn fill(&mut self, n: usize) -> anyhow::Result<()> {
        let frontends = [(1, FRONT_A, FRONT_B), (2, FRONT_B, FRONT_A)];
        let mut services = self.hash::<ServiceKey, ServiceValue>(map_names::SERVICES)?;
        for i in 0..n {
            let key = ServiceKey {
                addr: be(cluster::service_ip(i)),
                port: 80u16.to_be(),
                proto: PROTO_TCP,
                scope: SCOPE_SOCKET,
            };
            let value = ServiceValue {
                id: FIRST_GENERATED_ID + i as u32,
                count: BACKENDS_PER_SERVICE as u16,
                ..ServiceValue::default()
            };
            services.insert(key, value, 0)?;
        }
        for (id, front, _) in frontends {
            let key = ServiceKey {
                addr: be(front.0),
                port: front.1.to_be(),
                proto: PROTO_TCP,
                scope: SCOPE_EXTERNAL,
            };
            let value = ServiceValue {
                id,
                count: 1,
                ..ServiceValue::default()
            };
            services.insert(key, value, 0)?;
        }
        let mut backends = self.hash::<BackendKey, Backend>(map_names::BACKENDS)?;
        for (id, _, back) in frontends {
            let backend = Backend {
                addr: be(back.0),
                port: back.1.to_be(),
                pad: 0,
            };
            backends.insert(
                BackendKey {
                    service_id: id,
                    slot: 0,
                },
                backend,
                0,
            )?;
        }
        for i in 0..n as u32 {
            for slot in 0..BACKENDS_PER_SERVICE {
                let ip = Ipv4Addr::new(198, 19, 2 + slot as u8, 10 + (i % 200) as u8);
                let backend = Backend {
                    addr: be(ip),
                    port: 8080u16.to_be(),
                    pad: 0,
                };
                let key = BackendKey {
                    service_id: FIRST_GENERATED_ID + i,
                    slot,
                };
                backends.insert(key, backend, 0)?;
            }
        }
        let map = self
            .ebpf
            .map_mut(map_names::SNAT_CONFIG)
            .context("no SNAT config map")?;
        let mut config: Array<&mut MapData, SnatConfig> = Array::try_from(map)?;
        let (port_min, port_max) = SNAT_PORTS;
        config.set(0, SnatConfig { port_min, port_max }, 0)?;
        Ok(())
    }

    /// The flow entries of the translated cases: A and B are each other's backend, in both
    /// directions.
    fn ping_pong_flows(&mut self) -> anyhow::Result<()> {
        let mut ct = self.hash::<CtKey, CtValue>(map_names::CONNTRACK)?;
        for (front, back) in [(FRONT_A, FRONT_B), (FRONT_B, FRONT_A)] {
            let forward = CtValue {
                addr: be(back.0),
                port: back.1.to_be(),
                ..CtValue::default()
            };
            ct.insert(ct_key(CLIENT, front), forward, 0)?;
            // The reply of the flow to `back` leaves as `front`.
            let reply = CtValue {
                addr: be(front.0),
                port: front.1.to_be(),
                flags: CT_FLAG_REPLY,
                ..CtValue::default()
            };
            ct.insert(ct_key(back, CLIENT), reply, 0)?;
        }
        Ok(())
    }

    /// Runs `program` on `frame` `repeat` times: (verdict, mean ns, the frame afterwards).
    fn run(&self, program: &str, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, f64, Vec<u8>)> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .with_context(|| format!("no program {program}"))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, result.duration.as_nanos() as f64, out))
    }

    /// `SAMPLES` timed calls of `repeat` runs each; the frame must come out as `expect`.
    fn repeated(
        &self,
        program: &str,
        frame: &[u8],
        repeat: u32,
        expect: &[u8],
    ) -> anyhow::Result<Vec<f64>> {
        let mut samples = Vec::new();
        for _ in 0..SAMPLES {
            let (verdict, ns, out) = self.run(program, frame, repeat)?;
            ensure!(verdict == TC_ACT_OK, "{program}: verdict {verdict}");
            ensure!(
                out == expect,
                "{program}: the frame after {repeat} runs is not the expected one"
            );
            samples.push(ns);
        }
        Ok(samples)
    }

    fn cases(&mut self, n: usize, repeat: u32, new_flows: usize) -> anyhow::Result<Vec<Case>> {
        self.ping_pong_flows()?;
        let mut cases = Vec::new();
        let mut push = |case: &'static str, method: String, samples: Vec<f64>| {
            cases.push(Case {
                services: n,
                case,
                ns_per_packet: median(&samples),
                method,
                samples,
            })
        };
        let repeated = format!("{repeat} runs per call, {SAMPLES} calls");
        let (ingress, egress) = (program_names::TC_INGRESS, program_names::TC_EGRESS);

        // A translated packet of an established flow: one run must turn A into B.
        let to_a = tcp(CLIENT, FRONT_A, TCP_ACK | TCP_PSH);
        let to_b = tcp(CLIENT, FRONT_B, TCP_ACK | TCP_PSH);
        let (_, _, once) = self.run(ingress, &to_a, 1)?;
        ensure!(
            same_headers(&once, &to_b),
            "ingress did not translate the flow to A into one to B"
        );
        push(
            "ingress, service hit (established flow, DNAT)",
            repeated.clone(),
            self.repeated(ingress, &to_a, repeat, &to_a)?,
        );

        // The backend's reply, rewritten on egress to come from the frontend.
        let from_b = tcp(FRONT_B, CLIENT, TCP_ACK | TCP_PSH);
        let from_a = tcp(FRONT_A, CLIENT, TCP_ACK | TCP_PSH);
        let (_, _, once) = self.run(egress, &from_b, 1)?;
        ensure!(
            same_headers(&once, &from_a),
            "egress did not rewrite the reply from B into one from A"
        );
        push(
            "egress, reply of a translated flow (reverse DNAT)",
            repeated.clone(),
            self.repeated(egress, &from_b, repeat, &from_b)?,
        );

        // Pod-to-pod traffic that is no service, untouched.
        let request = tcp(POD_CLIENT, POD_SERVER, TCP_ACK | TCP_PSH);
        let reply = tcp(POD_SERVER, POD_CLIENT, TCP_ACK | TCP_PSH);
        let miss = self.repeated(ingress, &request, repeat, &request)?;
        let miss_ns = median(&miss);
        push(
            "ingress, miss (no service; port below the SNAT range)",
            repeated.clone(),
            miss,
        );
        push(
            "ingress, miss (no service; port in the SNAT range)",
            repeated.clone(),
            self.repeated(ingress, &reply, repeat, &reply)?,
        );
        push(
            "egress, miss (no flow)",
            repeated.clone(),
            self.repeated(egress, &request, repeat, &request)?,
        );

        // New flows: one run per call, each from a new client port (two conntrack entries
        // each). The harness's own cost per call is what one-run calls of the miss case take
        // beyond its repeated mean.
        let one_run = |frame: &[u8]| -> anyhow::Result<f64> {
            let (verdict, ns, _) = self.run(ingress, frame, 1)?;
            ensure!(verdict == TC_ACT_OK, "ingress: verdict {verdict}");
            Ok(ns)
        };
        let mut single_miss = Vec::new();
        for _ in 0..new_flows {
            single_miss.push(one_run(&request)?);
        }
        let overhead = (median(&single_miss) - miss_ns).max(0.0);
        let mut syns = Vec::new();
        for i in 0..new_flows {
            let port = 10_000 + i as u16;
            let syn = tcp((CLIENT.0, port), FRONT_A, TCP_SYN);
            syns.push((one_run(&syn)? - overhead).max(0.0));
        }
        push(
            "ingress, service hit (new flow: SYN, backend pick, 2 conntrack inserts)",
            format!(
                "1 run per call, {new_flows} calls, less {overhead:.0} ns harness overhead per call"
            ),
            syns,
        );
        Ok(cases)
    }
}

/// Whether two frames carry the same addresses and ports (checksums aside).
fn same_headers(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a[26..38] == b[26..38]
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Ethernet + IPv4 (20 bytes, DF) + TCP (20 bytes) + 16 bytes of payload, checksums right.
fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    const PAYLOAD: &[u8] = b"switchyard bench";
    let l4_len = 20 + PAYLOAD.len();
    let mut f = Vec::with_capacity(34 + l4_len);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[12..16].copy_from_slice(&src.0.octets());
    ip[16..20].copy_from_slice(&dst.0.octets());
    let csum = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut l4 = Vec::with_capacity(l4_len);
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&1u32.to_be_bytes());
    l4.extend_from_slice(&(if flags & TCP_ACK != 0 { 1u32 } else { 0 }).to_be_bytes());
    l4.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    l4.extend_from_slice(PAYLOAD);
    let pseudo =
        sum16(&src.0.octets()) + sum16(&dst.0.octets()) + u32::from(PROTO_TCP) + l4_len as u32;
    let csum = !fold(pseudo + sum16(&l4));
    l4[16..18].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&l4);
    f
}

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

/// Fails unless the object exists (checked before the long dataplane part starts).
pub fn check_object() -> anyhow::Result<()> {
    let path = object_path();
    if !path.is_file() {
        bail!(
            "no eBPF object at {}: run `cargo xtask build` first",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums_and_the_right_tuple() {
        let f = tcp(CLIENT, FRONT_A, TCP_SYN);
        assert_eq!(f.len(), 14 + 20 + 20 + 16);
        assert_eq!(fold(sum16(&f[14..34])), 0xffff, "IPv4 header checksum");
        let pseudo = sum16(&f[26..34]) + u32::from(PROTO_TCP) + (f.len() - 34) as u32;
        assert_eq!(fold(pseudo + sum16(&f[34..])), 0xffff, "TCP checksum");
        assert_eq!(&f[30..34], &FRONT_A.0.octets());
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), FRONT_A.1);
        assert!(same_headers(&f, &tcp(CLIENT, FRONT_A, TCP_ACK)));
        assert!(!same_headers(&f, &tcp(CLIENT, FRONT_B, TCP_SYN)));
    }
}
