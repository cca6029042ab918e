//! The service names map (`SWY_SVC_NAMES`): which service port each backend-set id belongs to.
//!
//! The kernel's service entries hold backend-set ids only, so without this map nothing on the
//! node could say which service an entry serves once the controller is gone. It is pinned with
//! the other maps, so it lives, is adopted and is removed exactly as they are; a regular state
//! file cannot live on bpffs, and one elsewhere could outlive or disagree with the maps.
//!
//! The names are informational: no program reads them, a failed write costs only a name in
//! `switchyard status`, and the next verify rewrites what is missing.
use std::collections::{BTreeMap, BTreeSet};

use switchyard_common::{
    ServiceName, NAME_SET_CLUSTER, NAME_SET_EXTERNAL, NAME_SET_INTERNAL, PROTO_TCP, PROTO_UDP,
};

use super::SetKind;
use crate::conntrack::IPPROTO_SCTP;
use crate::{Protocol, ServicePortKey};

/// One write to the names map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameOp {
    /// Insert or replace the name of a set.
    Put(u32, ServiceName),
    /// Remove the name of a set no port holds any more.
    Delete(u32),
}

/// The map value naming set `set` of `key`.
pub fn encode(key: &ServicePortKey, set: SetKind) -> ServiceName {
    let mut value = ServiceName::default();
    copy_text(&mut value.namespace, &key.namespace);
    copy_text(&mut value.name, &key.name);
    copy_text(&mut value.port_name, &key.port_name);
    value.proto = match key.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        // Never written (an SCTP port has no service entry), but named all the same.
        Protocol::Sctp => IPPROTO_SCTP,
    };
    value.set = match set {
        SetKind::Internal => NAME_SET_INTERNAL,
        SetKind::Cluster => NAME_SET_CLUSTER,
        SetKind::External => NAME_SET_EXTERNAL,
    };
    value
}

/// The service port and set a map value names; `None` for a value this version cannot read
/// (not UTF-8, an unknown protocol or set).
pub fn decode(value: &ServiceName) -> Option<(ServicePortKey, SetKind)> {
    let protocol = match value.proto {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        IPPROTO_SCTP => Protocol::Sctp,
        _ => return None,
    };
    let set = match value.set {
        NAME_SET_INTERNAL => SetKind::Internal,
        NAME_SET_CLUSTER => SetKind::Cluster,
        NAME_SET_EXTERNAL => SetKind::External,
        _ => return None,
    };
    let key = ServicePortKey {
        namespace: read_text(&value.namespace)?,
        name: read_text(&value.name)?,
        port_name: read_text(&value.port_name)?,
        protocol,
    };
    Some((key, set))
}

/// A 64-bit fingerprint of a value (FNV-1a), which is all the writer keeps of what it wrote:
/// a full copy would cost 152 bytes per backend set for a comparison.
pub fn fingerprint(value: &ServiceName) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = value
        .namespace
        .iter()
        .chain(&value.name)
        .chain(&value.port_name)
        .chain([&value.proto, &value.set]);
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The writes that bring the names map from `written` (fingerprints) to `wanted`: a put for
/// every wanted name the map lacks or holds differently, a delete for every `stale` id that
/// is written and not wanted.
pub fn plan(
    written: &BTreeMap<u32, u64>,
    wanted: impl IntoIterator<Item = (u32, ServiceName)>,
    stale: impl IntoIterator<Item = u32>,
) -> Vec<NameOp> {
    let mut ids = BTreeSet::new();
    let mut ops: Vec<NameOp> = wanted
        .into_iter()
        .filter_map(|(id, name)| {
            ids.insert(id);
            (written.get(&id) != Some(&fingerprint(&name))).then_some(NameOp::Put(id, name))
        })
        .collect();
    let deletes: BTreeSet<u32> = stale
        .into_iter()
        .filter(|id| written.contains_key(id) && !ids.contains(id))
        .collect();
    ops.extend(deletes.into_iter().map(NameOp::Delete));
    ops
}

/// Copies `text` NUL-padded into `field`, cut on a character boundary so that one NUL always
/// ends it.
fn copy_text(field: &mut [u8], text: &str) {
    let mut end = text.len().min(field.len() - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].copy_from_slice(&text.as_bytes()[..end]);
}

/// The text before the first NUL.
fn read_text(field: &[u8]) -> Option<String> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port_name: &str, protocol: Protocol) -> ServicePortKey {
        ServicePortKey {
            namespace: "demo".into(),
            name: "web".into(),
            port_name: port_name.into(),
            protocol,
        }
    }

    #[test]
    fn names_round_trip() {
        for (k, set) in [
            (key("http", Protocol::Tcp), SetKind::Internal),
            (key("", Protocol::Udp), SetKind::External),
            (key("dns-tcp", Protocol::Tcp), SetKind::Cluster),
        ] {
            assert_eq!(decode(&encode(&k, set)), Some((k, set)));
        }
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let mut k = key("ünïcödé-pört-näme", Protocol::Tcp);
        k.name = "x".repeat(62) + "é";
        let (back, _) = decode(&encode(&k, SetKind::Internal)).expect("decodes");
        assert_eq!(back.name, "x".repeat(62), "the 2-byte é does not fit in 63");
        assert!(back.port_name.len() <= 15, "{}", back.port_name);
        assert!(k.port_name.starts_with(&back.port_name));
    }

    #[test]
    fn unreadable_values_decode_to_none() {
        let mut value = encode(&key("http", Protocol::Tcp), SetKind::Internal);
        value.proto = 136; // UDP-Lite: never written
        assert_eq!(decode(&value), None);
        let mut value = encode(&key("http", Protocol::Tcp), SetKind::Internal);
        value.set = 9;
        assert_eq!(decode(&value), None);
        let mut value = encode(&key("http", Protocol::Tcp), SetKind::Internal);
        value.name[0] = 0xff;
        assert_eq!(decode(&value), None);
    }

    #[test]
    fn plan_puts_what_differs_and_deletes_only_stale_unwanted_ids() {
        let a = encode(&key("a", Protocol::Tcp), SetKind::Internal);
        let b = encode(&key("b", Protocol::Tcp), SetKind::Internal);
        let (fa, fb) = (fingerprint(&a), fingerprint(&b));
        assert_ne!(fa, fb);
        let written = BTreeMap::from([(1, fa), (2, fa), (3, fb), (4, fb)]);
        // 3 is stale; 4 is not named stale (a foreign set still in service) and stays.
        let ops = plan(&written, [(1, a), (2, b), (5, a)], [3, 2, 3, 9]);
        assert_eq!(
            ops,
            [NameOp::Put(2, b), NameOp::Put(5, a), NameOp::Delete(3)]
        );
        let now = BTreeMap::from([(1, fa), (2, fb), (5, fa)]);
        assert!(plan(&now, [(1, a), (2, b), (5, a)], [1, 2, 5]).is_empty());
    }
}
