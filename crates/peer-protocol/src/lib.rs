//! `peer_protocol`: placeholder, filled by its issue.
//!
//! ```
//! // nothing here yet
//! ```
