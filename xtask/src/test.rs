//! `cargo xtask test`: the README's test command and the whole of CI.

use anyhow::Result;
use xshell::{Shell, cmd};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Skip `cargo fmt --check` and clippy (for a quick local loop).
    #[arg(long)]
    quick: bool,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    if !args.quick {
        cmd!(sh, "cargo fmt --all -- --check").run()?;
        cmd!(
            sh,
            "cargo clippy --workspace --all-targets --all-features -- -D warnings"
        )
        .run()?;
        crate::docs::build(&sh)?;
    }
    cmd!(sh, "cargo test --workspace --all-features").run()?;
    Ok(())
}
