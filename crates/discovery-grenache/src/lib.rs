//! `discovery_grenache`: placeholder, filled by its issue.
//!
//! ```
//! // nothing here yet
//! ```
