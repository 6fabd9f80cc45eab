//! `peer_storage`: placeholder, filled by its issue.
//!
//! ```
//! // nothing here yet
//! ```
