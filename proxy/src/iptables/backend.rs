//! Which iptables backend the node uses, and the commands for it per IP family.
use std::process::Command;

use switchyard_model::iptables::rule_set::Family;

/// The kernel interface behind the `iptables` commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesBackend {
    /// x_tables (`iptables-legacy`): the whole table is replaced on every write.
    Legacy,
    /// nf_tables through the iptables-nft compatibility layer.
    Nft,
}

impl IptablesBackend {
    /// The backend `iptables` on this node points at: what kubelet and the CNI use, so our
    /// rules land beside theirs. `iptables --version` says `(nf_tables)` or `(legacy)`.
    pub fn detect() -> Result<Self, std::io::Error> {
        let out = Command::new("iptables").arg("--version").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(if text.contains("nf_tables") {
            IptablesBackend::Nft
        } else {
            IptablesBackend::Legacy
        })
    }

    /// `iptables` for single-rule commands.
    pub fn iptables(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "iptables-legacy",
            IptablesBackend::Nft => "iptables-nft",
        }
    }

    /// `iptables-restore`.
    pub fn restore(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "iptables-legacy-restore",
            IptablesBackend::Nft => "iptables-nft-restore",
        }
    }

    /// `iptables-save`.
    pub fn save(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "iptables-legacy-save",
            IptablesBackend::Nft => "iptables-nft-save",
        }
    }

    /// The full-sync strategy that avoids this backend's cliff.
    pub fn strategy(self) -> super::restore::Strategy {
        match self {
            IptablesBackend::Legacy => super::restore::Strategy::Single,
            IptablesBackend::Nft => super::restore::Strategy::Batched {
                ports_per_batch: super::restore::NFT_PORTS_PER_BATCH,
            },
        }
    }
}

impl std::fmt::Display for IptablesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IptablesBackend::Legacy => "legacy",
            IptablesBackend::Nft => "nft",
        })
    }
}

/// The commands of one backend for one IP family: `iptables-*` for IPv4, `ip6tables-*` for
/// IPv6. Upstream runs one proxier per family; so does iptables mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tools {
    /// The backend.
    pub backend: IptablesBackend,
    /// The IP family.
    pub family: Family,
}

impl From<IptablesBackend> for Tools {
    /// IPv4, what a bare backend has always meant.
    fn from(backend: IptablesBackend) -> Self {
        Tools {
            backend,
            family: Family::Ipv4,
        }
    }
}

impl Tools {
    /// `backend`'s tools for `family`.
    pub fn new(backend: IptablesBackend, family: Family) -> Self {
        Tools { backend, family }
    }

    /// `iptables` / `ip6tables` for single-rule commands.
    pub fn iptables(self) -> &'static str {
        match (self.family, self.backend) {
            (Family::Ipv4, b) => b.iptables(),
            (Family::Ipv6, IptablesBackend::Legacy) => "ip6tables-legacy",
            (Family::Ipv6, IptablesBackend::Nft) => "ip6tables-nft",
        }
    }

    /// `iptables-restore` / `ip6tables-restore`.
    pub fn restore(self) -> &'static str {
        match (self.family, self.backend) {
            (Family::Ipv4, b) => b.restore(),
            (Family::Ipv6, IptablesBackend::Legacy) => "ip6tables-legacy-restore",
            (Family::Ipv6, IptablesBackend::Nft) => "ip6tables-nft-restore",
        }
    }

    /// `iptables-save` / `ip6tables-save`.
    pub fn save(self) -> &'static str {
        match (self.family, self.backend) {
            (Family::Ipv4, b) => b.save(),
            (Family::Ipv6, IptablesBackend::Legacy) => "ip6tables-legacy-save",
            (Family::Ipv6, IptablesBackend::Nft) => "ip6tables-nft-save",
        }
    }
}

impl std::fmt::Display for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.backend, self.family)
    }
}
