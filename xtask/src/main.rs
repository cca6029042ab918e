//! Switchyard's task runner: `cargo xtask <setup|build|test|lint|fuzz|demo|bench|image>`.
mod build;
mod command;
mod demo;
mod fuzz;
mod image;
mod lint;
mod setup;
mod test;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Switchyard build, setup, test and demo tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (packages, nightly rust-src, bpf-linker, cargo-fuzz,
    /// bpffs).
    Setup,
    /// Build the eBPF object and the binaries that embed it.
    Build {
        /// Optimised userspace build.
        #[arg(long)]
        release: bool,
    },
    /// Setup, build, and run every test.
    Test {
        /// Test name filter passed to the test binaries.
        filter: Vec<String>,
    },
    /// Check formatting and clippy (userspace and kernel crate).
    Lint,
    /// Run each fuzz target (`proxy/fuzz/`, nightly + cargo-fuzz) for a bounded time, starting
    /// from the committed corpus.
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks: the dataplane at 1 to 30,000 services vs the no-proxy path and the tc
    /// programs' cost per packet, or with `-- controlplane` the control plane at scale (extra
    /// args go to the bench binary, e.g. `-- --rounds 5`, `-- dataplane --quick` or
    /// `-- controlplane --quick`); `-- churn [--seconds N]` runs the endpoint churn soak for N
    /// seconds (default 60) in both modes.
    Bench {
        /// Arguments for switchyard-bench.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, and run switchyard on the bundled example manifests in a namespace sandbox.
    Demo(demo::DemoArgs),
    /// Build the container image (OCI image layout archive, target/image/switchyard.oci.tar)
    /// from Debian packages and the binary, without a container engine or registry.
    Image(image::ImageArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = workspace_root();
    match args.task {
        Task::Setup => setup::setup(),
        Task::Build { release } => {
            setup::setup()?;
            build::build(&root, release)
        }
        Task::Test { filter } => test::test(&root, &filter),
        Task::Lint => lint::lint(&root),
        Task::Fuzz(fuzz_args) => fuzz::fuzz(&root, &fuzz_args),
        Task::Bench { args } => bench(&root, &args),
        Task::Demo(demo_args) => demo::demo(&root, demo_args),
        Task::Image(args) => image::image(&root, &args, false).map(drop),
    }
}

/// The workspace root: xtask's manifest dir is one level below it.
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// Builds everything, then runs the benchmark binary with the freshly built switchyard.
fn bench(root: &std::path::Path, args: &[String]) -> anyhow::Result<()> {
    if args.first().map(String::as_str) == Some("churn") {
        return churn(root, &args[1..]);
    }
    setup::setup()?;
    build::build(root, true)?;
    command::run(
        command::cargo(None)
            .current_dir(root)
            .args(["run", "--release", "--package", "switchyard-benches", "--"])
            .args(args)
            .env(
                switchyard_testbed::switchyard::SWITCHYARD_ENV,
                root.join("target/release/switchyard"),
            )
            .env(
                switchyard_testbed::PROBE_ENV,
                root.join("target/release/swy-probe"),
            ),
    )
}

/// The long endpoint churn soak: `proxy/tests/endpoint_churn.rs` (10 s in the suite) for
/// `--seconds N` (default 60), both modes, with its summary lines shown.
fn churn(root: &std::path::Path, args: &[String]) -> anyhow::Result<()> {
    let seconds = match args {
        [] => 60,
        [flag, n] if flag == "--seconds" => n
            .parse::<u64>()
            .map_err(|e| anyhow::anyhow!("--seconds {n}: {e}"))?,
        _ => anyhow::bail!("usage: cargo xtask bench -- churn [--seconds N]"),
    };
    setup::setup()?;
    build::build(root, false)?;
    command::run(
        command::cargo(None)
            .current_dir(root)
            .args([
                "test",
                "--package",
                "switchyard",
                "--test",
                "endpoint_churn",
                "--",
                "--nocapture",
            ])
            .env("SWITCHYARD_CHURN_SECONDS", seconds.to_string()),
    )
}
