//! `cargo xtask fuzz`: runs every cargo-fuzz target of `fuzz/` for a bounded time each.
//!
//! Needs the nightly toolchain (cargo-fuzz builds with sanitizers); installs `cargo-fuzz` when it
//! is missing. Findings land in `fuzz/artifacts/<target>/`, the corpus in `fuzz/corpus/<target>/`.

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// Runs each fuzz target for `seconds` seconds; fails on the first target that finds a crash.
pub(crate) fn run(seconds: u64) -> Result<()> {
    if seconds == 0 {
        bail!("fuzzing for 0 seconds would run forever: give a positive time");
    }
    let sh = Shell::new()?;
    // cargo-fuzz finds `fuzz/` below the project it is run in.
    let root = crate::project_root();
    let fuzz_dir = root.join("fuzz");
    sh.change_dir(&root);
    if cmd!(sh, "cargo +nightly --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_err()
    {
        bail!("cargo fuzz needs the nightly toolchain: rustup toolchain install nightly");
    }
    if cmd!(sh, "cargo fuzz --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_err()
    {
        cmd!(sh, "cargo install --locked cargo-fuzz").run()?;
    }
    let targets = cmd!(sh, "cargo +nightly fuzz list")
        .read()
        .context("listing the fuzz targets")?;
    let targets: Vec<&str> = targets
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        bail!("no fuzz targets found in {}", fuzz_dir.display());
    }
    let max_time = format!("-max_total_time={seconds}");
    for target in targets {
        println!("fuzzing {target} for {seconds}s");
        cmd!(sh, "cargo +nightly fuzz run {target} -- {max_time}")
            .run()
            .with_context(|| {
                format!("fuzz target {target} failed (see fuzz/artifacts/{target})")
            })?;
    }
    Ok(())
}
