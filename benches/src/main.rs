//! `cargo xtask bench`: Switchyard's benchmarks.
//!
//! Without a subcommand it runs the connection benchmark ([`connections`]), so
//! `cargo xtask bench -- --rounds 7` keeps working; `controlplane` runs the control-plane
//! benchmark ([`controlplane`]), `model` the pure model's cost ([`model`]).
mod connections;
mod controlplane;
mod model;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "Switchyard benchmarks",
    // The connection benchmark's flags stay valid at the top level (the default benchmark);
    // mixing them with a subcommand would be ambiguous.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    bench: Option<Bench>,
    #[command(flatten)]
    connections: connections::Args,
}

#[derive(Subcommand)]
enum Bench {
    /// New-connection cost through each dataplane vs the direct path (the default).
    Connections(connections::Args),
    /// Control-plane cost at scale: first sync, one-service change, idle CPU, peak RSS.
    Controlplane(controlplane::Args),
    /// The pure model at scale: fresh computation and one-change incremental update.
    Model(model::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.bench {
        None => connections::run(&cli.connections),
        Some(Bench::Connections(args)) => connections::run(&args),
        Some(Bench::Controlplane(args)) => controlplane::run(&args),
        Some(Bench::Model(args)) => model::run(&args),
    }
}
