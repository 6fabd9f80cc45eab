//! Test support: the skip rule and an isolated network of namespaces.

pub mod netns;

pub use discovery_grenache::testing::skip;
