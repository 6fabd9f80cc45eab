//! The `p2p-exchange` binary.

fn main() {}
