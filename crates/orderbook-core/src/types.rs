//! Public value types of the matcher: commands, events, orders and markets.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The side of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// A bid: buys the base asset.
    Buy,
    /// An ask: sells the base asset.
    Sell,
}

impl Side {
    /// The other side.
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

/// The type of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderType {
    /// Trades at its limit price or better; may rest on the book.
    Limit,
    /// Trades at any price against resting liquidity; never rests (its remainder is cancelled).
    Market,
}

/// How long an order stays active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeInForce {
    /// Good till cancelled: the unfilled remainder of a limit order rests on the book.
    Gtc,
    /// Immediate or cancel: trades what it can at once, the remainder is cancelled.
    Ioc,
    /// Fill or kill: fills completely at once or is rejected without any effect.
    Fok,
    /// Maker only: rejected if it would trade on arrival, otherwise rests like `Gtc`.
    PostOnly,
}

/// What happens when an incoming order would trade with a resting order of the same owner.
///
/// The option of the *incoming* order decides; the option a resting order
/// was placed with is not consulted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfTradePrevention {
    /// Owners are ignored: the orders trade with each other.
    #[default]
    None,
    /// The resting order is cancelled and matching continues with the next one.
    CancelResting,
    /// The incoming order's remainder is cancelled; matching stops there.
    CancelIncoming,
}

/// A globally unique order id chosen by the caller.
///
/// `Display` and `FromStr` use the decimal representation. In human-readable
/// serde formats (JSON) it is a decimal string, in binary formats a `u128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(pub u128);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for OrderId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(OrderId)
    }
}

impl From<u128> for OrderId {
    fn from(value: u128) -> Self {
        OrderId(value)
    }
}

impl Serialize for OrderId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(&self.0)
        } else {
            serializer.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for OrderId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = OrderId;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an order id as a decimal string or an unsigned integer")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OrderId, E> {
                    v.parse().map_err(|_| E::custom("invalid order id"))
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<OrderId, E> {
                    Ok(OrderId(u128::from(v)))
                }
                fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<OrderId, E> {
                    Ok(OrderId(v))
                }
            }
            deserializer.deserialize_any(Visitor)
        } else {
            u128::deserialize(deserializer).map(OrderId)
        }
    }
}

/// The owner of an order (a node or an account). Only the owner may cancel it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct OwnerId(pub u64);

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A market: its name and the exact grid its prices and quantities must lie on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MarketSpec {
    /// The market's name, e.g. `BTC-USD`.
    pub name: String,
    /// Every price must be a positive multiple of this.
    pub tick_size: Decimal,
    /// Every quantity must be a positive multiple of this.
    pub lot_size: Decimal,
}

impl MarketSpec {
    /// A market spec from its parts.
    pub fn new(name: impl Into<String>, tick_size: Decimal, lot_size: Decimal) -> Self {
        MarketSpec {
            name: name.into(),
            tick_size,
            lot_size,
        }
    }
}

/// A new order for [`Command::Place`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    /// Globally unique id chosen by the caller.
    pub id: OrderId,
    /// Who places it; only this owner may cancel it.
    pub owner: OwnerId,
    /// The market's name.
    pub market: String,
    /// Buy or sell.
    pub side: Side,
    /// Limit or market.
    pub order_type: OrderType,
    /// The limit price: required for limit orders, must be `None` for market orders.
    pub price: Option<Decimal>,
    /// The quantity: a positive multiple of the market's lot size.
    pub quantity: Decimal,
    /// How long the order stays active. A market order never rests: `Gtc` and
    /// `Ioc` both mean "cancel the remainder", `Fok` keeps its meaning and
    /// `PostOnly` is rejected.
    pub time_in_force: TimeInForce,
    /// Self-trade prevention for this order when it arrives.
    pub stp: SelfTradePrevention,
}

/// An input to the matcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Place a new order.
    Place(NewOrder),
    /// Cancel a resting order. Order ids are global, so no market is needed.
    Cancel {
        /// The order to cancel.
        id: OrderId,
        /// Who asks; the cancel is honoured only if this is the order's owner.
        owner: OwnerId,
    },
}

/// Why an order left the book (or never reached it) without being filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Its owner cancelled it.
    Requested,
    /// The remainder of a market or IOC order that found no more liquidity.
    Unfilled,
    /// Cancelled by self-trade prevention.
    SelfTrade,
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CancelReason::Requested => "cancelled by its owner",
            CancelReason::Unfilled => "remainder cancelled: no more liquidity",
            CancelReason::SelfTrade => "cancelled by self-trade prevention",
        })
    }
}

/// Why a command was rejected. A rejected command changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The order names a market the exchange does not have.
    UnknownMarket,
    /// The price is zero, negative or too large.
    InvalidPrice,
    /// The quantity is zero, negative or too large.
    InvalidQuantity,
    /// The price is not a multiple of the market's tick size.
    OffTick,
    /// The quantity is not a multiple of the market's lot size.
    OffLot,
    /// A limit order without a price.
    MissingPrice,
    /// A market order with a price.
    UnexpectedPrice,
    /// A market order with `PostOnly`.
    InvalidTimeInForce,
    /// An order with this id is already resting on a book.
    DuplicateOrderId,
    /// A post-only order would have traded on arrival.
    PostOnlyWouldTake,
    /// A fill-or-kill order could not be filled completely at once.
    FokUnfillable,
    /// A cancel from someone other than the order's owner.
    NotOwner,
    /// A cancel of an order that is unknown or already finished (a no-op).
    UnknownOrder,
    /// The market's book holds the maximum number of orders.
    BookFull,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::UnknownMarket => "unknown market",
            RejectReason::InvalidPrice => "price must be positive and within range",
            RejectReason::InvalidQuantity => "quantity must be positive and within range",
            RejectReason::OffTick => "price is not a multiple of the tick size",
            RejectReason::OffLot => "quantity is not a multiple of the lot size",
            RejectReason::MissingPrice => "limit order without a price",
            RejectReason::UnexpectedPrice => "market order with a price",
            RejectReason::InvalidTimeInForce => "market order cannot be post-only",
            RejectReason::DuplicateOrderId => "duplicate order id",
            RejectReason::PostOnlyWouldTake => "post-only order would take liquidity",
            RejectReason::FokUnfillable => "fill-or-kill order cannot be filled completely",
            RejectReason::NotOwner => "only the order's owner may cancel it",
            RejectReason::UnknownOrder => "unknown or finished order",
            RejectReason::BookFull => "the book is full",
        })
    }
}

/// One outcome of a command. A command yields a list of these, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The order passed validation and is being processed.
    Accepted {
        /// The order.
        id: OrderId,
    },
    /// Two orders traded at the maker's price.
    Trade {
        /// The market's name.
        market: String,
        /// The resting order.
        maker: OrderId,
        /// The incoming order.
        taker: OrderId,
        /// The resting order's owner.
        maker_owner: OwnerId,
        /// The incoming order's owner.
        taker_owner: OwnerId,
        /// The trade price (the maker's limit price).
        price: Decimal,
        /// The traded quantity.
        quantity: Decimal,
        /// The side of the incoming order.
        taker_side: Side,
    },
    /// An order (maker or taker) is now completely filled and finished.
    Filled {
        /// The order.
        id: OrderId,
    },
    /// The incoming order's remainder now rests on the book.
    Rested {
        /// The order.
        id: OrderId,
        /// Its limit price.
        price: Decimal,
        /// The quantity resting (its remainder).
        quantity: Decimal,
    },
    /// An order left the book, or its remainder never reached it.
    Cancelled {
        /// The order.
        id: OrderId,
        /// Why.
        reason: CancelReason,
        /// The quantity that was cancelled (unfilled).
        remaining: Decimal,
    },
    /// The command was rejected and changed nothing.
    Rejected {
        /// The order the command was about.
        id: OrderId,
        /// Why.
        reason: RejectReason,
    },
}

/// The lifecycle state of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Resting, nothing filled yet.
    Open,
    /// Resting, partly filled.
    PartiallyFilled,
    /// Completely filled.
    Filled,
    /// Cancelled (by its owner, by self-trade prevention, or an unfilled remainder).
    Cancelled,
    /// Rejected on arrival.
    Rejected,
}

/// The state of an order, as returned by [`crate::Exchange::order`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// The order.
    pub id: OrderId,
    /// Its owner.
    pub owner: OwnerId,
    /// Its market's name.
    pub market: String,
    /// Buy or sell.
    pub side: Side,
    /// Its limit price (`None` for market orders).
    pub price: Option<Decimal>,
    /// Its original quantity.
    pub quantity: Decimal,
    /// How much of it has traded.
    pub filled: Decimal,
    /// Where it is in its lifecycle.
    pub status: OrderStatus,
}

impl OrderState {
    /// The quantity not yet filled.
    pub fn remaining(&self) -> Decimal {
        self.quantity - self.filled
    }
}

/// Aggregated book depth: `(price, total quantity)` per level, best first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Depth {
    /// Bid levels, highest price first.
    pub bids: Vec<(Decimal, Decimal)>,
    /// Ask levels, lowest price first.
    pub asks: Vec<(Decimal, Decimal)>,
}
