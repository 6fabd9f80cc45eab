//! `cargo xtask chaos` (being built).

use anyhow::{Result, bail};
use clap::Args as ClapArgs;

/// Options of `cargo xtask chaos`.
#[derive(ClapArgs, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask chaos` is not built yet")
}
