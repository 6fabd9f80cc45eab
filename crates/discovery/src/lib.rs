//! `discovery`: placeholder, filled by its issue.
//!
//! ```
//! // nothing here yet
//! ```
