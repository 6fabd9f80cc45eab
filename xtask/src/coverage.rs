//! `cargo xtask coverage`: line coverage per crate (the seed's `test:coverage`).
//!
//! Installs `llvm-tools-preview` and `cargo-llvm-cov` when they are missing.

use anyhow::Result;
use xshell::{Shell, cmd};

pub(crate) fn run() -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    if cmd!(sh, "cargo llvm-cov --version")
        .quiet()
        .ignore_stderr()
        .read()
        .is_err()
    {
        cmd!(sh, "rustup component add llvm-tools-preview").run()?;
        cmd!(sh, "cargo install --locked cargo-llvm-cov").run()?;
    }
    let _env = crate::test::prepare(&sh)?;
    // The summary table lists every file; the per-crate lines are summed below.
    let json = cmd!(
        sh,
        "cargo llvm-cov --workspace --all-features --json --summary-only"
    )
    .read()?;
    let report: serde_json::Value = serde_json::from_str(&json)?;
    let root = crate::project_root();
    let mut per_crate: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for data in report["data"].as_array().into_iter().flatten() {
        for file in data["files"].as_array().into_iter().flatten() {
            let name = file["filename"].as_str().unwrap_or_default();
            let rel = std::path::Path::new(name)
                .strip_prefix(&root)
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|_| name.into());
            let mut parts = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            let krate = match parts.next().as_deref() {
                Some("crates") => parts.next().unwrap_or_default(),
                Some(other) => other.to_owned(),
                None => continue,
            };
            let lines = &file["summary"]["lines"];
            let entry = per_crate.entry(krate).or_default();
            entry.0 += lines["covered"].as_u64().unwrap_or(0);
            entry.1 += lines["count"].as_u64().unwrap_or(0);
        }
    }
    println!(
        "{:<22} {:>8} {:>8} {:>8}",
        "crate", "covered", "lines", "percent"
    );
    for (krate, (covered, count)) in per_crate {
        let pct = if count == 0 {
            100.0
        } else {
            100.0 * covered as f64 / count as f64
        };
        println!("{krate:<22} {covered:>8} {count:>8} {pct:>7.1}%");
    }
    Ok(())
}
