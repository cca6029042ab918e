//! The model crate stays pure: no runtime, kernel, API-client or I/O crate may enter its
//! normal dependency graph (dev-dependencies are the tests' business).
use std::process::Command;

/// Crates whose presence would mean I/O or time crept into the pure core.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "aya",
    "aya-obj",
    "kube",
    "kube-client",
    "kube-runtime",
    "hyper",
    "reqwest",
    "nix",
    "libc",
    "notify",
    "rtnetlink",
    "mio",
    "socket2",
];

#[test]
fn the_model_crate_depends_on_no_io_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--package",
            "switchyard-model",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"k8s-openapi"), "the tree was read: {tree}");
    let found: Vec<&&str> = crates.iter().filter(|c| FORBIDDEN.contains(c)).collect();
    assert!(
        found.is_empty(),
        "I/O crates in the model's graph: {found:?}\n{tree}"
    );
}
