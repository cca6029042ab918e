//! The one interface between the planner and the maps, and what can go wrong per port.
use switchyard_common::ServiceKey;

use super::MapOp;
use crate::ServicePortKey;

/// Runs map operations one at a time: the kernel maps in the dataplane, an in-memory fake in
/// the tests. Each operation either happens entirely or not at all.
pub trait MapWriter {
    /// Why an operation was refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Runs one operation. Deleting what is not there is success.
    fn run(&mut self, op: &MapOp) -> Result<(), Self::Error>;
}

/// A frontend another service port still holds. The model gives every frontend one owner,
/// so this only happens when the owner could not release it (its delete failed); the port
/// is retried by the next sync.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frontend {addr}:{port} (protocol {proto}) is still held by {owner}")]
pub struct FrontendConflict {
    /// The address, in host order as written `a.b.c.d`.
    pub addr: std::net::Ipv4Addr,
    /// The port number.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// The port that holds it.
    pub owner: ServicePortKey,
}

impl FrontendConflict {
    pub(super) fn new(key: &ServiceKey, owner: &ServicePortKey) -> Self {
        Self {
            addr: std::net::Ipv4Addr::from(u32::from_be(key.addr)),
            port: u16::from_be(key.port),
            proto: key.proto,
            owner: owner.clone(),
        }
    }
}

/// Why one service port was not (fully) programmed. The maps then hold what they held before
/// for the frontends the port keeps, and the planner knows exactly what that is.
#[derive(Debug, thiserror::Error)]
pub enum PortFailure<E: std::error::Error + 'static> {
    /// A map operation was refused (e.g. a full map).
    #[error(transparent)]
    Map(E),
    /// A frontend it wants is held by another port.
    #[error(transparent)]
    Conflict(FrontendConflict),
}
