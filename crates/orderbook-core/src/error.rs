//! The crate's error type. Rejected orders are not errors: they are
//! [`crate::Event::Rejected`] outcomes.

use rust_decimal::Decimal;

/// Errors of building or restoring an [`crate::Exchange`]. All are permanent:
/// retrying with the same input fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Two markets with the same name.
    #[error("duplicate market {0}")]
    DuplicateMarket(String),
    /// A market with an empty name.
    #[error("market name must not be empty")]
    EmptyMarketName,
    /// A tick size that is zero or negative.
    #[error("market {market}: tick size must be positive, got {value}")]
    InvalidTickSize {
        /// The market.
        market: String,
        /// The offending tick size.
        value: Decimal,
    },
    /// A lot size that is zero or negative.
    #[error("market {market}: lot size must be positive, got {value}")]
    InvalidLotSize {
        /// The market.
        market: String,
        /// The offending lot size.
        value: Decimal,
    },
    /// More markets than the engine can index (`u32::MAX`).
    #[error("too many markets")]
    TooManyMarkets,
    /// A snapshot that does not describe a valid state.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// An internal consistency check failed (see [`crate::Exchange::check_invariants`]).
    #[error("invariant violated: {0}")]
    Invariant(String),
}
