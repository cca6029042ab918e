//! The maps the programs share with userspace. Userspace sizes them before load.
use aya_ebpf::{macros::map, maps::HashMap};
use switchyard_common::{
    Backend, BackendKey, ServiceKey, ServiceValue, DEFAULT_BACKENDS_MAX, DEFAULT_SERVICES_MAX,
};

/// Frontends of every service port this node serves.
#[map(name = "SWY_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_SERVICES_MAX, 0);

/// Backend slots of every service entry.
#[map(name = "SWY_BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(DEFAULT_BACKENDS_MAX, 0);
