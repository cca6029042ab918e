//! Where the measured proxy reads its objects: a manifest directory, or the fake API server
//! (listening in the node's namespace) holding the same objects.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use switchyard_testbed::fake_apiserver::FakeApiServer;
use switchyard_testbed::{Manifests, Node, ObjectSource};

use super::cluster;

/// The object source under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `--manifests DIR`.
    Manifests,
    /// `--kubeconfig` pointing at the fake API server.
    Api,
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceKind::Manifests => "manifests",
            SourceKind::Api => "api",
        })
    }
}

/// The synthetic cluster, loaded into its source.
pub struct Objects {
    endpoints: usize,
    /// The manifest directory (also the kubeconfig's home for the API source).
    manifests: Manifests,
    api: Option<(FakeApiServer, PathBuf)>,
    /// Bytes of YAML generated.
    pub bytes: usize,
}

impl Objects {
    /// Generates `services` x `endpoints` and loads them into a source of `kind` for `node`.
    pub fn load(
        kind: SourceKind,
        node: &Node,
        services: usize,
        endpoints: usize,
    ) -> anyhow::Result<Self> {
        let manifests = Manifests::new()?;
        let files = cluster::files(services, endpoints)?;
        let bytes = files.iter().map(|(_, yaml)| yaml.len()).sum();
        let api = match kind {
            SourceKind::Manifests => {
                for (name, yaml) in &files {
                    manifests.write(name, yaml)?;
                }
                None
            }
            SourceKind::Api => {
                let bind = SocketAddr::from(([127, 0, 0, 1], 0));
                let server = FakeApiServer::start_in_netns(&node.netns_path, bind)
                    .context("starting the fake API server")?;
                for (name, yaml) in &files {
                    server
                        .apply_yaml(yaml)
                        .with_context(|| format!("applying {name}"))?;
                }
                let kubeconfig = manifests.path().join("kubeconfig");
                server.kubeconfig(&kubeconfig)?;
                Some((server, kubeconfig))
            }
        };
        Ok(Self {
            endpoints,
            manifests,
            api,
            bytes,
        })
    }

    /// The proxy's flag for this source.
    pub fn flag(&self) -> ObjectSource<'_> {
        match &self.api {
            Some((_, kubeconfig)) => ObjectSource::Kubeconfig(kubeconfig),
            None => ObjectSource::Manifests(self.manifests.path()),
        }
    }

    /// Rewrites service 0's EndpointSlice as `variant` (its first endpoint moves).
    pub fn change(&self, variant: usize) -> anyhow::Result<()> {
        let slice = cluster::slice_yaml(0, self.endpoints, variant);
        match &self.api {
            Some((server, _)) => drop(server.apply_yaml(&slice)?),
            None => self.manifests.write(cluster::CHANGING_SLICE_FILE, &slice)?,
        }
        Ok(())
    }
}
