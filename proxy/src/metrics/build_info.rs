//! Build info: `kubernetes_build_info` with the labels every Kubernetes component (kube-proxy
//! included) exports, so a dashboard's version panel shows Switchyard's build, and
//! `switchyard_build_info` with Switchyard's own names.
//!
//! The commit and tree state come from `SWITCHYARD_GIT_COMMIT` / `SWITCHYARD_GIT_TREE_STATE`
//! at build time (an image build sets them), else `unknown`.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The crate version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_COMMIT: Option<&str> = option_env!("SWITCHYARD_GIT_COMMIT");
const GIT_TREE_STATE: Option<&str> = option_env!("SWITCHYARD_GIT_TREE_STATE");
const BUILD_DATE: Option<&str> = option_env!("SWITCHYARD_BUILD_DATE");
/// `rustc --version` of the compiler that built the binary (set by `build.rs`).
const RUSTC_VERSION: &str = env!("SWITCHYARD_RUSTC_VERSION");

/// Upstream's `kubernetes_build_info` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubernetesBuildInfo {
    /// Major version.
    pub major: String,
    /// Minor version.
    pub minor: String,
    /// `v<version>+switchyard`, so no one takes it for a Kubernetes release.
    pub git_version: String,
    /// The commit built.
    pub git_commit: String,
    /// `clean` or `dirty`.
    pub git_tree_state: String,
    /// When it was built.
    pub build_date: String,
    /// The toolchain: Go's for Kubernetes, rustc's here.
    pub go_version: String,
    /// `rustc`.
    pub compiler: String,
    /// `linux/amd64` and the like.
    pub platform: String,
}

/// Switchyard's own build labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchyardBuildInfo {
    /// The crate version.
    pub version: String,
    /// The commit built.
    pub git_commit: String,
    /// `rustc --version`.
    pub rustc_version: String,
}

/// Go's name for this machine's architecture.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The labels of this build.
pub fn kubernetes_build_info() -> KubernetesBuildInfo {
    let mut parts = VERSION.split('.');
    KubernetesBuildInfo {
        major: parts.next().unwrap_or_default().to_owned(),
        minor: parts.next().unwrap_or_default().to_owned(),
        git_version: format!("v{VERSION}+switchyard"),
        git_commit: GIT_COMMIT.unwrap_or("unknown").to_owned(),
        git_tree_state: GIT_TREE_STATE.unwrap_or("unknown").to_owned(),
        build_date: BUILD_DATE.unwrap_or("unknown").to_owned(),
        go_version: RUSTC_VERSION.to_owned(),
        compiler: "rustc".to_owned(),
        platform: format!("{}/{}", std::env::consts::OS, go_arch()),
    }
}

/// Registers both gauges, at 1.
pub fn register(registry: &mut Registry) {
    let kubernetes: Family<KubernetesBuildInfo, Gauge> = Family::default();
    kubernetes.get_or_create(&kubernetes_build_info()).set(1);
    registry.register(
        "kubernetes_build_info",
        "A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running",
        kubernetes,
    );
    let own: Family<SwitchyardBuildInfo, Gauge> = Family::default();
    own.get_or_create(&SwitchyardBuildInfo {
        version: VERSION.to_owned(),
        git_commit: GIT_COMMIT.unwrap_or("unknown").to_owned(),
        rustc_version: RUSTC_VERSION.to_owned(),
    })
    .set(1);
    registry.register(
        "switchyard_build_info",
        "A metric with a constant '1' value labeled by Switchyard's version, commit and compiler",
        own,
    );
}
