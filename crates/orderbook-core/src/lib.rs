//! `orderbook_core`: placeholder, filled by its issue.
//!
//! ```
//! // nothing here yet
//! ```
