//! Helpers that keep the rule tables short.

use orderbook_core::*;
use rust_decimal::Decimal;

/// Parses a decimal literal.
pub fn d(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|e| panic!("bad decimal {s}: {e}"))
}

/// An exchange with `BTC-USD` (tick 0.01, lot 0.0001) and `ETH-USD` (tick 0.05, lot 0.1).
pub fn exchange() -> Exchange {
    Exchange::new(vec![
        MarketSpec::new("BTC-USD", d("0.01"), d("0.0001")),
        MarketSpec::new("ETH-USD", d("0.05"), d("0.1")),
    ])
    .expect("valid markets")
}

/// A full order with every field given.
#[allow(clippy::too_many_arguments)]
pub fn order(
    id: u128,
    owner: u64,
    market: &str,
    side: Side,
    order_type: OrderType,
    price: Option<&str>,
    qty: &str,
    tif: TimeInForce,
    stp: SelfTradePrevention,
) -> Command {
    Command::Place(NewOrder {
        id: OrderId(id),
        owner: OwnerId(owner),
        market: market.into(),
        side,
        order_type,
        price: price.map(d),
        quantity: d(qty),
        time_in_force: tif,
        stp,
    })
}

/// A BTC-USD limit order; the owner is 100 + id unless said otherwise.
pub fn lim(id: u128, side: Side, price: &str, qty: &str, tif: TimeInForce) -> Command {
    order(
        id,
        100 + id as u64,
        "BTC-USD",
        side,
        OrderType::Limit,
        Some(price),
        qty,
        tif,
        SelfTradePrevention::None,
    )
}

/// A BTC-USD limit GTC order of a given owner with a self-trade prevention mode.
pub fn own(
    id: u128,
    owner: u64,
    side: Side,
    price: &str,
    qty: &str,
    stp: SelfTradePrevention,
) -> Command {
    order(
        id,
        owner,
        "BTC-USD",
        side,
        OrderType::Limit,
        Some(price),
        qty,
        TimeInForce::Gtc,
        stp,
    )
}

/// A BTC-USD market order.
pub fn mkt(id: u128, side: Side, qty: &str, tif: TimeInForce) -> Command {
    order(
        id,
        100 + id as u64,
        "BTC-USD",
        side,
        OrderType::Market,
        None,
        qty,
        tif,
        SelfTradePrevention::None,
    )
}

/// A cancel.
pub fn cxl(id: u128, owner: u64) -> Command {
    Command::Cancel {
        id: OrderId(id),
        owner: OwnerId(owner),
    }
}

fn snake<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// A compact, readable rendering of an event, used by the rule tables.
pub fn show(e: &Event) -> String {
    match e {
        Event::Accepted { id } => format!("accepted {id}"),
        Event::Trade {
            maker,
            taker,
            price,
            quantity,
            ..
        } => {
            format!(
                "trade {maker}<-{taker} {}@{}",
                quantity.normalize(),
                price.normalize()
            )
        }
        Event::Filled { id } => format!("filled {id}"),
        Event::Rested {
            id,
            price,
            quantity,
        } => {
            format!("rested {id} {}@{}", quantity.normalize(), price.normalize())
        }
        Event::Cancelled {
            id,
            reason,
            remaining,
        } => {
            format!("cancelled {id} {} {}", snake(reason), remaining.normalize())
        }
        Event::Rejected { id, reason } => format!("rejected {id} {}", snake(reason)),
    }
}

/// A book side rendered as `qty@price` per level, best first.
pub fn levels(levels: &[(Decimal, Decimal)]) -> Vec<String> {
    levels
        .iter()
        .map(|(p, q)| format!("{}@{}", q.normalize(), p.normalize()))
        .collect()
}
