//! The one interface between the planner and the maps, and what can go wrong per port.
use super::{Family, FamilyOp, V4};
use crate::ServicePortKey;

/// Runs map operations one at a time: the kernel maps in the dataplane, an in-memory fake in
/// the tests. Each operation either happens entirely or not at all. `F`: the address family
/// whose maps it writes.
pub trait MapWriter<F: Family = V4> {
    /// Why an operation was refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Runs one operation. Deleting what is not there is success.
    fn run(&mut self, op: &FamilyOp<F>) -> Result<(), Self::Error>;

    /// Runs `ops` in order until one fails, as [`run`](Self::run) would one by one, and
    /// says how many succeeded. A writer may hand runs of operations on one map to the
    /// kernel in one call (a first sync writes 100,000 slots); concurrent readers still see
    /// the operations happen in this order.
    fn run_all(&mut self, ops: &[FamilyOp<F>]) -> (usize, Result<(), Self::Error>) {
        for (done, op) in ops.iter().enumerate() {
            if let Err(e) = self.run(op) {
                return (done, Err(e));
            }
        }
        (ops.len(), Ok(()))
    }
}

/// A frontend another service port still holds. The model gives every frontend one owner,
/// so this only happens when the owner could not release it (its delete failed); the port
/// is retried by the next sync.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frontend {} (protocol {proto}) is still held by {owner}", std::net::SocketAddr::new(*addr, *port))]
pub struct FrontendConflict {
    /// The address.
    pub addr: std::net::IpAddr,
    /// The port number.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// The port that holds it.
    pub owner: ServicePortKey,
}

impl FrontendConflict {
    pub(super) fn new<F: Family>(key: &F::Key, owner: &ServicePortKey) -> Self {
        let (addr, port, proto, _) = F::parts(key);
        Self {
            addr,
            port,
            proto,
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
