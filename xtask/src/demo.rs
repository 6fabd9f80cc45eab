//! `cargo xtask demo` (being built).

use anyhow::{Result, bail};
use clap::Args as ClapArgs;

/// Options of `cargo xtask demo`.
#[derive(ClapArgs, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask demo` is not built yet")
}
