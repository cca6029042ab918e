//! `cargo xtask test`: setup, build, then every test of the workspace.
use std::path::Path;

use crate::command::{cargo, run};

/// Runs unit, testbed and dataplane tests. Extra arguments go to the test binaries' filter.
pub fn test(root: &Path, filter: &[String]) -> anyhow::Result<()> {
    crate::setup::setup()?;
    crate::build::build(root, false)?;
    // The debug image, for the image test (the root filesystem is cached, so this costs
    // seconds after the first time on a machine).
    crate::image::image(
        root,
        &crate::image::ImageArgs {
            debug: true,
            out: None,
        },
        true,
    )?;
    let mut cmd = cargo(None);
    cmd.current_dir(root).args(["test", "--workspace"]);
    if !filter.is_empty() {
        cmd.arg("--").args(filter);
    }
    run(&mut cmd)
}
