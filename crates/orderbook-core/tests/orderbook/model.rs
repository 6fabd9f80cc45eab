//! A property test: thousands of random commands go through the engine and
//! through a small, obviously correct reference model (a flat list of orders,
//! best maker found by a linear scan, `Decimal` arithmetic throughout). Both
//! must produce identical events and identical books, and the engine's
//! invariants must hold after every step.

use std::collections::HashMap;

use orderbook_core::*;
use proptest::prelude::*;
use rust_decimal::Decimal;

use crate::support::d;

/// The markets both implementations run: (name, tick, lot).
const MARKETS: [(&str, &str, &str); 2] = [("A", "0.05", "0.1"), ("B", "1", "0.001")];

#[derive(Debug, Clone)]
struct MOrder {
    id: OrderId,
    owner: OwnerId,
    side: Side,
    price: Decimal,
    remaining: Decimal,
    filled: Decimal,
    seq: u64,
}

struct MMarket {
    name: String,
    tick: Decimal,
    lot: Decimal,
    orders: Vec<MOrder>,
}

/// The reference model.
struct Model {
    markets: Vec<MMarket>,
    seq: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            markets: MARKETS
                .iter()
                .map(|&(name, tick, lot)| MMarket {
                    name: name.into(),
                    tick: d(tick),
                    lot: d(lot),
                    orders: vec![],
                })
                .collect(),
            seq: 0,
        }
    }

    fn execute(&mut self, cmd: &Command) -> Vec<Event> {
        match cmd {
            Command::Cancel { id, owner } => {
                for m in &mut self.markets {
                    if let Some(i) = m.orders.iter().position(|o| o.id == *id) {
                        if m.orders[i].owner != *owner {
                            return vec![Event::Rejected {
                                id: *id,
                                reason: RejectReason::NotOwner,
                            }];
                        }
                        let o = m.orders.remove(i);
                        return vec![Event::Cancelled {
                            id: *id,
                            reason: CancelReason::Requested,
                            remaining: o.remaining,
                        }];
                    }
                }
                vec![Event::Rejected {
                    id: *id,
                    reason: RejectReason::UnknownOrder,
                }]
            }
            Command::Place(o) => self.place(o),
        }
    }

    fn place(&mut self, o: &NewOrder) -> Vec<Event> {
        let reject = |reason| vec![Event::Rejected { id: o.id, reason }];
        let Some(mi) = self.markets.iter().position(|m| m.name == o.market) else {
            return reject(RejectReason::UnknownMarket);
        };
        let (tick, lot) = (self.markets[mi].tick, self.markets[mi].lot);
        match (o.order_type, o.price) {
            (OrderType::Limit, None) => return reject(RejectReason::MissingPrice),
            (OrderType::Market, Some(_)) => return reject(RejectReason::UnexpectedPrice),
            (OrderType::Market, None) if o.time_in_force == TimeInForce::PostOnly => {
                return reject(RejectReason::InvalidTimeInForce);
            }
            (OrderType::Limit, Some(p)) if p <= Decimal::ZERO => {
                return reject(RejectReason::InvalidPrice);
            }
            (OrderType::Limit, Some(p)) if !(p % tick).is_zero() => {
                return reject(RejectReason::OffTick);
            }
            _ => {}
        }
        if o.quantity <= Decimal::ZERO {
            return reject(RejectReason::InvalidQuantity);
        }
        if !(o.quantity % lot).is_zero() {
            return reject(RejectReason::OffLot);
        }
        if self
            .markets
            .iter()
            .any(|m| m.orders.iter().any(|r| r.id == o.id))
        {
            return reject(RejectReason::DuplicateOrderId);
        }
        let market = &mut self.markets[mi];
        // The makers this order may trade with, in priority order.
        let acceptable = |r: &MOrder| {
            r.side != o.side
                && match (o.price, o.side) {
                    (None, _) => true,
                    (Some(p), Side::Buy) => r.price <= p,
                    (Some(p), Side::Sell) => r.price >= p,
                }
        };
        let priority = |orders: &[MOrder]| {
            let mut v: Vec<MOrder> = orders.iter().filter(|r| acceptable(r)).cloned().collect();
            v.sort_by(|a, b| match o.side {
                Side::Buy => a.price.cmp(&b.price).then(a.seq.cmp(&b.seq)),
                Side::Sell => b.price.cmp(&a.price).then(a.seq.cmp(&b.seq)),
            });
            v
        };
        let prevents = |r: &MOrder| r.owner == o.owner && o.stp != SelfTradePrevention::None;
        match o.time_in_force {
            TimeInForce::PostOnly if !priority(&market.orders).is_empty() => {
                return reject(RejectReason::PostOnlyWouldTake);
            }
            TimeInForce::Fok => {
                let mut available = Decimal::ZERO;
                for r in priority(&market.orders) {
                    if prevents(&r) {
                        if o.stp == SelfTradePrevention::CancelIncoming {
                            break;
                        }
                    } else {
                        available += r.remaining;
                    }
                }
                if available < o.quantity {
                    return reject(RejectReason::FokUnfillable);
                }
            }
            _ => {}
        }
        let mut events = vec![Event::Accepted { id: o.id }];
        let mut remaining = o.quantity;
        while remaining > Decimal::ZERO {
            let Some(best) = priority(&market.orders).into_iter().next() else {
                break;
            };
            let i = market
                .orders
                .iter()
                .position(|r| r.id == best.id)
                .expect("maker exists");
            if prevents(&best) {
                if o.stp == SelfTradePrevention::CancelIncoming {
                    events.push(Event::Cancelled {
                        id: o.id,
                        reason: CancelReason::SelfTrade,
                        remaining,
                    });
                    return events;
                }
                market.orders.remove(i);
                events.push(Event::Cancelled {
                    id: best.id,
                    reason: CancelReason::SelfTrade,
                    remaining: best.remaining,
                });
                continue;
            }
            let q = remaining.min(best.remaining);
            remaining -= q;
            market.orders[i].remaining -= q;
            market.orders[i].filled += q;
            events.push(Event::Trade {
                market: market.name.clone(),
                maker: best.id,
                taker: o.id,
                maker_owner: best.owner,
                taker_owner: o.owner,
                price: best.price,
                quantity: q,
                taker_side: o.side,
            });
            if market.orders[i].remaining.is_zero() {
                market.orders.remove(i);
                events.push(Event::Filled { id: best.id });
            }
        }
        if remaining.is_zero() {
            events.push(Event::Filled { id: o.id });
        } else if let (Some(price), TimeInForce::Gtc | TimeInForce::PostOnly) =
            (o.price, o.time_in_force)
        {
            self.seq += 1;
            market.orders.push(MOrder {
                id: o.id,
                owner: o.owner,
                side: o.side,
                price,
                remaining,
                filled: o.quantity - remaining,
                seq: self.seq,
            });
            events.push(Event::Rested {
                id: o.id,
                price,
                quantity: remaining,
            });
        } else {
            events.push(Event::Cancelled {
                id: o.id,
                reason: CancelReason::Unfilled,
                remaining,
            });
        }
        events
    }

    /// One side of a market in priority order, as the engine reports it.
    fn resting(&self, market: &str, side: Side) -> Vec<RestingOrder> {
        let m = self
            .markets
            .iter()
            .find(|m| m.name == market)
            .expect("market");
        let mut v: Vec<&MOrder> = m.orders.iter().filter(|o| o.side == side).collect();
        v.sort_by(|a, b| match side {
            Side::Buy => b.price.cmp(&a.price).then(a.seq.cmp(&b.seq)),
            Side::Sell => a.price.cmp(&b.price).then(a.seq.cmp(&b.seq)),
        });
        v.into_iter()
            .map(|o| RestingOrder {
                id: o.id,
                owner: o.owner,
                price: o.price,
                quantity: o.remaining,
                filled: o.filled,
            })
            .collect()
    }
}

/// A random command before ids are resolved against the history.
#[derive(Debug, Clone)]
enum Op {
    Place {
        market: usize,
        /// `None`: a fresh id; `Some(k)`: reuse an earlier id (duplicates).
        reuse: Option<u16>,
        owner: u64,
        side: Side,
        market_order: bool,
        ticks: i64,
        off_tick: bool,
        lots: i64,
        off_lot: bool,
        tif: TimeInForce,
        stp: SelfTradePrevention,
    },
    Cancel {
        pick: u16,
        owner_ok: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let tif = prop_oneof![
        6 => Just(TimeInForce::Gtc),
        2 => Just(TimeInForce::Ioc),
        1 => Just(TimeInForce::Fok),
        1 => Just(TimeInForce::PostOnly),
    ];
    let stp = prop_oneof![
        4 => Just(SelfTradePrevention::None),
        1 => Just(SelfTradePrevention::CancelResting),
        1 => Just(SelfTradePrevention::CancelIncoming),
    ];
    let place = (
        (
            0..MARKETS.len(),
            prop::option::weighted(0.03, any::<u16>()),
            1..4u64,
        ),
        (
            prop_oneof![Just(Side::Buy), Just(Side::Sell)],
            prop::bool::weighted(0.1),
        ),
        (
            -2..25i64,
            prop::bool::weighted(0.03),
            -1..20i64,
            prop::bool::weighted(0.03),
        ),
        (tif, stp),
    )
        .prop_map(
            |(
                (market, reuse, owner),
                (side, market_order),
                (ticks, off_tick, lots, off_lot),
                (tif, stp),
            )| Op::Place {
                market,
                reuse,
                owner,
                side,
                market_order,
                ticks,
                off_tick,
                lots,
                off_lot,
                tif,
                stp,
            },
        );
    let cancel = (any::<u16>(), prop::bool::weighted(0.9))
        .prop_map(|(pick, owner_ok)| Op::Cancel { pick, owner_ok });
    prop_oneof![3 => place, 1 => cancel]
}

/// Turns random ops into commands; ids come from a counter or from history.
struct Resolver {
    next_id: u128,
    owners: HashMap<u128, u64>,
    /// Spread prices over millions of ticks (exercises the engine's ladder
    /// window, its growth and the far-price map) instead of a narrow band.
    wide: bool,
}

impl Resolver {
    fn command(&mut self, op: &Op) -> Command {
        match *op {
            Op::Place {
                market,
                reuse,
                owner,
                side,
                market_order,
                ticks,
                off_tick,
                lots,
                off_lot,
                tif,
                stp,
            } => {
                let id = match reuse {
                    Some(k) if self.next_id > 1 => u128::from(k) % (self.next_id - 1) + 1,
                    _ => {
                        self.next_id += 1;
                        self.next_id - 1
                    }
                };
                self.owners.entry(id).or_insert(owner);
                let (_, tick, lot) = MARKETS[market];
                // Prices in a narrow band so that orders cross often.
                let mut n = ticks + 20;
                if self.wide {
                    n *= [1, 37, 5_000, 70_001][ticks.rem_euclid(4) as usize];
                }
                let mut price = d(tick) * Decimal::from(n);
                if off_tick {
                    price += d(tick) / Decimal::from(4);
                }
                let mut quantity = d(lot) * Decimal::from(lots);
                if off_lot {
                    quantity += d(lot) / Decimal::from(2);
                }
                Command::Place(NewOrder {
                    id: OrderId(id),
                    owner: OwnerId(owner),
                    market: MARKETS[market].0.into(),
                    side,
                    order_type: if market_order {
                        OrderType::Market
                    } else {
                        OrderType::Limit
                    },
                    price: if market_order { None } else { Some(price) },
                    quantity,
                    time_in_force: tif,
                    stp,
                })
            }
            Op::Cancel { pick, owner_ok } => {
                let id = u128::from(pick) % self.next_id.max(1) + 1;
                let owner = self.owners.get(&id).copied().unwrap_or(1);
                Command::Cancel {
                    id: OrderId(id),
                    owner: OwnerId(if owner_ok { owner } else { owner + 1 }),
                }
            }
        }
    }
}

fn check_step(
    ex: &Exchange,
    model: &Model,
    cmd: &Command,
    events: &[Event],
) -> Result<(), TestCaseError> {
    ex.check_invariants()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for &(name, _, _) in &MARKETS {
        let book = ex.market(name).expect("market");
        for side in [Side::Buy, Side::Sell] {
            let engine = ex.resting(name, side).expect("market");
            prop_assert_eq!(
                &engine,
                &model.resting(name, side),
                "book {} {:?} after {:?}",
                name,
                side,
                cmd
            );
            for o in &engine {
                prop_assert!(o.quantity > Decimal::ZERO && o.filled >= Decimal::ZERO);
            }
        }
        if let (Some(bid), Some(ask)) = (book.best_bid(), book.best_ask()) {
            prop_assert!(bid < ask, "crossed book {} {} >= {}", name, bid, ask);
        }
    }
    // Quantity is conserved for the incoming order: traded + rested/cancelled = ordered.
    if let Command::Place(o) = cmd
        && matches!(events.first(), Some(Event::Accepted { .. }))
    {
        let mut total = Decimal::ZERO;
        for e in events {
            match e {
                Event::Trade {
                    taker, quantity, ..
                } if *taker == o.id => total += *quantity,
                Event::Rested { id, quantity, .. } if *id == o.id => total += *quantity,
                Event::Cancelled { id, remaining, .. } if *id == o.id => total += *remaining,
                _ => {}
            }
        }
        prop_assert_eq!(total, o.quantity, "quantity not conserved for {:?}", cmd);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_reference_model(ops in prop::collection::vec(op(), 1000..3000)) {
        run_against_model(&ops, false)?;
    }

    #[test]
    fn engine_matches_reference_model_on_wide_prices(ops in prop::collection::vec(op(), 1000..3000)) {
        run_against_model(&ops, true)?;
    }
}

/// Runs `ops` through the engine, a differently seeded engine and the model,
/// checking every step.
fn run_against_model(ops: &[Op], wide: bool) -> Result<(), TestCaseError> {
    let specs: Vec<MarketSpec> = MARKETS
        .iter()
        .map(|&(n, t, l)| MarketSpec::new(n, d(t), d(l)))
        .collect();
    let mut ex = Exchange::new(specs.clone()).expect("markets");
    // Another hash seed lays the maps out differently and must change nothing.
    let mut seeded = Exchange::with_hash_seed(specs, 0x5eed_1234_abcd_0042).expect("markets");
    let mut model = Model::new();
    let mut ids = Resolver {
        next_id: 1,
        owners: HashMap::new(),
        wide,
    };
    for (step, op) in ops.iter().enumerate() {
        let cmd = ids.command(op);
        let events = ex.execute(cmd.clone());
        prop_assert_eq!(
            &seeded.execute(cmd.clone()),
            &events,
            "hash seed changed a result"
        );
        let expected = model.execute(&cmd);
        prop_assert_eq!(&events, &expected, "step {}: {:?}", step, cmd);
        check_step(&ex, &model, &cmd, &events)?;
        if step % 100 == 0 {
            let json = serde_json::to_string(&ex.snapshot()).expect("json");
            let restored =
                Exchange::restore(serde_json::from_str(&json).expect("json")).expect("restore");
            prop_assert_eq!(restored.digest(), ex.digest());
            prop_assert_eq!(seeded.digest(), ex.digest());
            restored
                .check_invariants()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
    Ok(())
}
