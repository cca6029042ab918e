//! The `switchyard` binary: flags -> settings -> proxy (or cleanup).
use clap::Parser;
use switchyard::config::{Cli, Settings};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The config file may set the verbosity, so logging starts once it is read.
    let settings = Settings::build(cli, hostname)?;
    init_logging(settings.verbosity);
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    settings.check_paths()?;
    if settings.init_only {
        return Ok(());
    }
    if let Some(path) = &settings.write_config_to {
        anyhow::bail!(
            "--write-config-to {}: not supported; Switchyard reads kube-proxy's \
             KubeProxyConfiguration but does not write one",
            path.display()
        );
    }
    if settings.cleanup {
        return switchyard::run::cleanup(&settings);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(switchyard::run::run(settings))
}

/// klog levels map onto tracing levels; RUST_LOG, when set, wins.
fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0..=1 => "info",
        2..=5 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal; pod logs and captured test output stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_lowercase())
        .unwrap_or_else(|| "localhost".into())
}
