//! `node`: placeholder, filled by its issue.
//!
//! ```
//! // nothing here yet
//! ```
