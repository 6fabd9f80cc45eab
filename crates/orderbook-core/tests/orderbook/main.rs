//! Integration tests of `orderbook-core`: table-driven rules, snapshots and
//! digests, and a property test against a reference model.

mod model;
mod rules;
mod support;
