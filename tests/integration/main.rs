//! Workspace-level integration tests: real `p2p-exchange` processes on 127.0.0.1.
//!
//! One test binary (as ripgrep does); each module is one end-to-end scenario. Crate- and
//! in-process tests live in the crates themselves; these run the shipped binary as an operator
//! would.

mod crash;
mod discovery;
mod grenache;
mod partition;
mod quick_start;
