//! `vector_clock`: placeholder, filled by its issue.
//!
//! ```
//! // nothing here yet
//! ```
