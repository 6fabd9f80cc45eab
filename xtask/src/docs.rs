//! `cargo xtask docs`: API documentation of every crate, warnings denied.

use anyhow::Result;
use xshell::{Shell, cmd};

pub(crate) fn run(open: bool) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    build(&sh)?;
    let index = crate::project_root().join("target/doc/node/index.html");
    println!("documentation: {}", index.display());
    if open {
        cmd!(sh, "cargo doc --no-deps --workspace --all-features --open").run()?;
    }
    Ok(())
}

/// `cargo doc --no-deps` for the whole workspace with rustdoc warnings as errors.
pub(crate) fn build(sh: &Shell) -> Result<()> {
    let _env = sh.push_env("RUSTDOCFLAGS", "-D warnings");
    cmd!(sh, "cargo doc --no-deps --workspace --all-features").run()?;
    Ok(())
}
