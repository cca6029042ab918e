//! Which iptables backend the node uses, and the commands for it.
use std::process::Command;

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
