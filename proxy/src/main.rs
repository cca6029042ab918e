//! The `switchyard` binary: flags -> settings -> proxy (or cleanup), or `switchyard status`.
use std::process::ExitCode;

use clap::Parser;
use switchyard::config::{Cli, Command, LogFormat, Settings};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Status(args)) = &cli.command {
        return match switchyard::status::run(args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(LogFormat::Text, &anyhow::Error::from(e)),
        };
    }
    // The config file may set the verbosity and the format, so logging starts once it is read.
    let settings = match Settings::build(cli, hostname) {
        Ok(settings) => settings,
        Err(e) => return fail(LogFormat::Text, &anyhow::Error::from(e)),
    };
    let format = settings.logging_format;
    init_logging(settings.verbosity, format);
    match start(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format, &e),
    }
}

/// Reports the error that ends the process, and exits with 1 (as kube-proxy's `cli.Run`).
fn fail(format: LogFormat, error: &anyhow::Error) -> ExitCode {
    match format {
        LogFormat::Text => eprintln!("Error: {error:?}"),
        LogFormat::Json => tracing::error!(error = format!("{error:#}"), "command failed"),
    }
    ExitCode::FAILURE
}

fn start(settings: Settings) -> anyhow::Result<()> {
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    settings.check_paths()?;
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
    // kube-proxy's platform set-up, before the proxy starts and also with --init-only; both
    // modes (node processes go through netfilter conntrack in ebpf mode too).
    switchyard::conntrack::sysctls::set_up(&settings.conntrack)
        .map_err(|e| anyhow::Error::new(e).context("conntrack sysctls"))?;
    if settings.init_only {
        // The other write a non-privileged container cannot make (its /proc/sys is read-only).
        switchyard::run::ensure_route_localnet(&settings)?;
        tracing::info!("--init-only: the conntrack sysctls (and route_localnet) are set; exiting");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(switchyard::run::run(settings))
}

/// klog levels map onto tracing levels of Switchyard's own modules only (libraries such as
/// kube, hyper and rustls stay at info, or their debug output would drown ours); RUST_LOG,
/// when set, wins. JSON lines carry the event's fields at the top level, next to `level`
/// and `message`.
fn init_logging(verbosity: u8, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(filter_for_verbosity(verbosity)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            // Colour codes only for a terminal; pod logs and captured test output stay plain.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
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
