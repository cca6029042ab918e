//! `cargo xtask bench`: Switchyard's benchmarks.
//!
//! Without a subcommand it runs the dataplane benchmark ([`dataplane`]), so
//! `cargo xtask bench -- --rounds 5` is the dataplane run with five rounds; `controlplane`
//! runs the control-plane benchmark ([`controlplane`]), `model` the pure model's cost
//! ([`model`]), `connections` the old one-service connection comparison ([`connections`]).
mod connections;
mod controlplane;
mod dataplane;
mod model;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "Switchyard benchmarks",
    // The dataplane benchmark's flags stay valid at the top level (the default benchmark);
    // mixing them with a subcommand would be ambiguous.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    bench: Option<Bench>,
    #[command(flatten)]
    dataplane: dataplane::Args,
}

#[derive(Subcommand)]
enum Bench {
    /// The dataplane at 1 to 30,000 services vs the no-proxy path, and the tc programs'
    /// cost per packet (the default).
    Dataplane(dataplane::Args),
    /// Control-plane cost at scale: first sync, one-service change, idle CPU, peak RSS.
    Controlplane(controlplane::Args),
    /// The pure model at scale: fresh computation and one-change incremental update.
    Model(model::Args),
    /// New-connection cost through each dataplane vs the direct path, one service.
    Connections(connections::Args),
    /// The dataplane benchmark's load generator, run inside the testbed's namespaces.
    #[command(hide = true)]
    Load(dataplane::load::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.bench {
        None => dataplane::run(&cli.dataplane),
        Some(Bench::Dataplane(args)) => dataplane::run(&args),
        Some(Bench::Controlplane(args)) => controlplane::run(&args),
        Some(Bench::Model(args)) => model::run(&args),
        Some(Bench::Connections(args)) => connections::run(&args),
        Some(Bench::Load(args)) => dataplane::load::run(&args),
    }
}
