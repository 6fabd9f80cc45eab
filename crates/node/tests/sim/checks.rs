//! The checks of issue 7 over the engines' public state.

use std::collections::BTreeMap;

use node::engine::{Engine, MAX_TRADES_KEPT, OrderStatus, TradeView};
use node::ids::ApiOrderId;
use orderbook_core::Side;
use rust_decimal::Decimal;

use super::world::Ack;

/// A node's settled trades over all markets, in settlement order (trade ids are sequential
/// over the whole network).
pub fn trade_log(engine: &Engine) -> Vec<TradeView> {
    let mut log: Vec<TradeView> = engine
        .markets()
        .iter()
        .flat_map(|m| engine.trades(&m.name, usize::MAX))
        .collect();
    log.sort_by_key(|t| t.trade_id);
    log
}

/// Whether `a` is a prefix of `b`.
pub fn is_prefix(a: &[TradeView], b: &[TradeView]) -> bool {
    a.len() <= b.len() && a == &b[..a.len()]
}

/// The index of the first trade where two logs differ (or the shorter length).
pub fn first_difference(a: &[TradeView], b: &[TradeView]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Check 2 on one node: no book crossed; every trade at the maker's price and within the
/// taker's limit; no order filled beyond its quantity, and each order's filled quantity is
/// exactly the sum of its trades; acknowledged orders are stored as the client sent them.
pub fn book_invariants(engine: &Engine, acks: &[Ack]) -> Result<(), String> {
    for market in engine.markets() {
        let Some(book) = engine.book(&market.name) else {
            return Err(format!("market {} is missing", market.name));
        };
        if let (Some(bid), Some(ask)) = (book.best_bid(), book.best_ask())
            && bid >= ask
        {
            return Err(format!(
                "book {} is crossed: bid {bid} >= ask {ask}",
                market.name
            ));
        }
    }
    let log = trade_log(engine);
    let complete = engine
        .markets()
        .iter()
        .all(|m| engine.trades(&m.name, usize::MAX).len() < MAX_TRADES_KEPT);
    for (i, trade) in log.iter().enumerate() {
        if complete && trade.trade_id != i as u64 + 1 {
            return Err(format!(
                "trade ids are not sequential: #{i} is {}",
                trade.trade_id
            ));
        }
    }
    let mut fills: BTreeMap<String, Decimal> = BTreeMap::new();
    for trade in &log {
        let maker = order_view(engine, &trade.maker_order_id)?;
        let taker = order_view(engine, &trade.taker_order_id)?;
        if maker.price != Some(trade.price) {
            return Err(format!(
                "trade {} at {} but the maker {} rests at {:?}",
                trade.trade_id, trade.price, trade.maker_order_id, maker.price
            ));
        }
        if let Some(limit) = taker.price {
            let within = match trade.taker_side {
                Side::Buy => trade.price <= limit,
                Side::Sell => trade.price >= limit,
            };
            if !within {
                return Err(format!(
                    "trade {} at {} is beyond the taker's limit {limit}",
                    trade.trade_id, trade.price
                ));
            }
        }
        if taker.side != trade.taker_side || maker.side == taker.side {
            return Err(format!("trade {} has inconsistent sides", trade.trade_id));
        }
        for id in [&trade.maker_order_id, &trade.taker_order_id] {
            *fills.entry(id.clone()).or_default() += trade.quantity;
        }
    }
    for (id, filled) in &fills {
        let view = order_view(engine, id)?;
        if *filled > view.quantity {
            return Err(format!("order {id} traded {filled} of {}", view.quantity));
        }
        if complete && *filled != view.filled_quantity {
            return Err(format!(
                "order {id} shows {} filled but its trades sum to {filled}",
                view.filled_quantity
            ));
        }
    }
    for ack in acks {
        let Some(view) = engine.order(ack.id) else {
            continue;
        };
        if view.filled_quantity > view.quantity {
            return Err(format!(
                "order {} filled {} of {}",
                ack.id, view.filled_quantity, view.quantity
            ));
        }
        if view.status == OrderStatus::Filled && view.filled_quantity != view.quantity {
            return Err(format!(
                "order {} is filled with {} of {}",
                ack.id, view.filled_quantity, view.quantity
            ));
        }
        let sent = &ack.order;
        if view.market != sent.market
            || view.side != sent.side
            || view.order_type != sent.order_type
            || view.price != sent.price
            || view.quantity != sent.quantity
            || view.time_in_force != sent.time_in_force
        {
            return Err(format!(
                "order {} differs from what its client sent: {view:?} vs {sent:?}",
                ack.id
            ));
        }
    }
    Ok(())
}

fn order_view(engine: &Engine, id: &str) -> Result<node::engine::OrderView, String> {
    let parsed: ApiOrderId = id
        .parse()
        .map_err(|e| format!("bad order id {id:?} in a trade: {e}"))?;
    engine
        .order(parsed)
        .ok_or_else(|| format!("a trade names order {id}, which this node does not know"))
}

/// The checks after the heal: 1 (equal trade logs), 5 (equal digests), 2 (on every node),
/// 3 (every acknowledged order on every node, settled; acknowledged cancels took effect
/// unless their node was evicted before they settled).
pub fn final_checks(
    engines: &[&Engine],
    acks: &[Ack],
    cancels: &[ApiOrderId],
) -> Result<(), (u8, String)> {
    let Some(first) = engines.first() else {
        return Err((0, "no engine".to_owned()));
    };
    let log = trade_log(first);
    for (i, engine) in engines.iter().enumerate().skip(1) {
        let other = trade_log(engine);
        if other != log {
            return Err((
                1,
                format!(
                    "after the heal node {i} has {} trades and node 0 {}, first difference at {}",
                    other.len(),
                    log.len(),
                    first_difference(&log, &other)
                ),
            ));
        }
    }
    let digest = first.digest();
    for (i, engine) in engines.iter().enumerate().skip(1) {
        if engine.digest() != digest {
            return Err((
                5,
                format!("after the heal node {i}'s digest differs from node 0's"),
            ));
        }
    }
    for (i, engine) in engines.iter().enumerate() {
        book_invariants(engine, acks).map_err(|m| (2, format!("node {i}: {m}")))?;
    }
    for ack in acks {
        for (i, engine) in engines.iter().enumerate() {
            let Some(view) = engine.order(ack.id) else {
                let at_origin = engines
                    .get(ack.node)
                    .and_then(|e| e.order(ack.id))
                    .map(|v| (v.status, v.reason));
                return Err((
                    3,
                    format!(
                        "order {} acknowledged by node {} is missing on node {i} \
                         (on its own node: {at_origin:?})",
                        ack.id, ack.node
                    ),
                ));
            };
            match view.status {
                OrderStatus::Pending => {
                    return Err((
                        3,
                        format!(
                            "order {} is still pending on node {i} after quiescence",
                            ack.id
                        ),
                    ));
                }
                OrderStatus::Rejected if view.reason.is_none() => {
                    return Err((
                        3,
                        format!("order {} is rejected without a reason on node {i}", ack.id),
                    ));
                }
                _ => {}
            }
        }
    }
    // A cancel acknowledged by a node that was evicted afterwards may come after its cut: the
    // network voids it (the order stays as settled). Every other acknowledged cancel took effect.
    let cut_origins: Vec<String> = first.status().cut.into_keys().collect();
    for id in cancels {
        let id_text = id.to_string();
        let origin_prefix = id_text.split('-').next().unwrap_or_default();
        let voidable = cut_origins.iter().any(|o| o.starts_with(origin_prefix));
        for (i, engine) in engines.iter().enumerate() {
            let status = engine.order(*id).map(|v| v.status);
            let void_cancel = voidable
                && matches!(
                    status,
                    Some(OrderStatus::Open | OrderStatus::PartiallyFilled)
                );
            if !void_cancel
                && !matches!(
                    status,
                    Some(OrderStatus::Cancelled | OrderStatus::Filled | OrderStatus::Rejected)
                )
            {
                return Err((
                    3,
                    format!("order {id} was cancelled by its client but is {status:?} on node {i}"),
                ));
            }
        }
    }
    Ok(())
}
