//! The `switchyard` binary: flags -> settings -> proxy (or cleanup), or `switchyard status`.
use clap::Parser;
use switchyard::config::{Cli, Command, Settings};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Status(args)) = &cli.command {
        print!("{}", switchyard::status::run(args)?);
        return Ok(());
    }
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

/// klog levels map onto tracing levels of Switchyard's own modules only (libraries such as
/// kube, hyper and rustls stay at info, or their debug output would drown ours); RUST_LOG,
/// when set, wins.
fn init_logging(verbosity: u8) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(filter_for_verbosity(verbosity)));
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

/// The tracing filter for `-v N`.
fn filter_for_verbosity(verbosity: u8) -> &'static str {
    match verbosity {
        0..=1 => "info",
        // `switchyard_ebpf` is the target of the kernel programs' forwarded log events.
        2..=5 => "info,switchyard=debug,switchyard_ebpf=debug",
        _ => "info,switchyard=trace,switchyard_ebpf=trace",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn verbosity_raises_only_our_own_modules() {
        assert_eq!(super::filter_for_verbosity(0), "info");
        for v in [2, 4] {
            let filter = super::filter_for_verbosity(v);
            assert!(
                filter.starts_with("info,"),
                "libraries stay at info: {filter}"
            );
            assert!(filter.contains("switchyard=debug"), "{filter}");
        }
        assert!(super::filter_for_verbosity(9).contains("switchyard=trace"));
    }
}
