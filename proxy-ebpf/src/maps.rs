//! The maps the programs share with userspace. Userspace sizes them before load.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap},
};
use switchyard_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, ServiceKey, ServiceValue, SockRevKey,
    SockRevValue, DEFAULT_AFFINITY_MAX, DEFAULT_BACKENDS_MAX, DEFAULT_SERVICES_MAX,
    DEFAULT_SOCK_REVNAT_MAX,
};

/// Frontends of every service port this node serves.
#[map(name = "SWY_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_SERVICES_MAX, 0);

/// Backend slots of every service entry.
#[map(name = "SWY_BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(DEFAULT_BACKENDS_MAX, 0);

/// Which service a translated socket really talks to, for recvmsg4 and getpeername4.
#[map(name = "SWY_SOCK_REVNAT")]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::with_max_entries(DEFAULT_SOCK_REVNAT_MAX, 0);

/// Session affinity per client network namespace and service.
#[map(name = "SWY_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY_MAX, 0);
