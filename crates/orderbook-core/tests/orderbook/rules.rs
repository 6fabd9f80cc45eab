//! Every matching rule as a row of a table: setup commands, the command under
//! test, the events it must produce and the BTC-USD book it must leave.

use orderbook_core::OrderType::{Limit, Market};
use orderbook_core::SelfTradePrevention::{CancelIncoming, CancelResting};
use orderbook_core::Side::{Buy, Sell};
use orderbook_core::TimeInForce::{Fok, Gtc, Ioc, PostOnly};
use orderbook_core::*;

use crate::support::*;

struct Case {
    name: &'static str,
    setup: Vec<Command>,
    cmd: Command,
    events: &'static [&'static str],
    bids: &'static [&'static str],
    asks: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let none = SelfTradePrevention::None;
    vec![
        Case {
            name: "a limit order on an empty book rests",
            setup: vec![],
            cmd: lim(1, Buy, "100", "1", Gtc),
            events: &["accepted 1", "rested 1 1@100"],
            bids: &["1@100"],
            asks: &[],
        },
        Case {
            name: "a crossing buy trades at the maker's (lower) price",
            setup: vec![lim(1, Sell, "100.25", "1.5", Gtc)],
            cmd: lim(2, Buy, "101", "1.5", Gtc),
            events: &[
                "accepted 2",
                "trade 1<-2 1.5@100.25",
                "filled 1",
                "filled 2",
            ],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "a crossing sell trades at the maker's (higher) price",
            setup: vec![lim(1, Buy, "100", "1", Gtc)],
            cmd: lim(2, Sell, "99", "1", Gtc),
            events: &["accepted 2", "trade 1<-2 1@100", "filled 1", "filled 2"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "best price first",
            setup: vec![lim(1, Sell, "101", "1", Gtc), lim(2, Sell, "100", "1", Gtc)],
            cmd: lim(3, Buy, "101", "1.5", Gtc),
            events: &[
                "accepted 3",
                "trade 2<-3 1@100",
                "filled 2",
                "trade 1<-3 0.5@101",
                "filled 3",
            ],
            bids: &[],
            asks: &["0.5@101"],
        },
        Case {
            name: "fifo within a level",
            setup: vec![lim(1, Sell, "100", "1", Gtc), lim(2, Sell, "100", "1", Gtc)],
            cmd: lim(3, Buy, "100", "1", Gtc),
            events: &["accepted 3", "trade 1<-3 1@100", "filled 1", "filled 3"],
            bids: &[],
            asks: &["1@100"],
        },
        Case {
            name: "a partly filled maker keeps its place with the rest",
            setup: vec![lim(1, Sell, "100", "2", Gtc), lim(2, Sell, "100", "1", Gtc)],
            cmd: lim(3, Buy, "100", "0.5", Gtc),
            events: &["accepted 3", "trade 1<-3 0.5@100", "filled 3"],
            bids: &[],
            asks: &["2.5@100"],
        },
        Case {
            name: "the remainder of a gtc taker rests at its limit",
            setup: vec![lim(1, Sell, "100", "1", Gtc)],
            cmd: lim(2, Buy, "100.5", "3", Gtc),
            events: &[
                "accepted 2",
                "trade 1<-2 1@100",
                "filled 1",
                "rested 2 2@100.5",
            ],
            bids: &["2@100.5"],
            asks: &[],
        },
        Case {
            name: "a limit never trades through its price",
            setup: vec![lim(1, Sell, "101", "1", Gtc)],
            cmd: lim(2, Buy, "100.99", "1", Gtc),
            events: &["accepted 2", "rested 2 1@100.99"],
            bids: &["1@100.99"],
            asks: &["1@101"],
        },
        Case {
            name: "a market buy sweeps levels and its remainder is cancelled",
            setup: vec![lim(1, Sell, "100", "1", Gtc), lim(2, Sell, "105", "1", Gtc)],
            cmd: mkt(3, Buy, "2.5", Ioc),
            events: &[
                "accepted 3",
                "trade 1<-3 1@100",
                "filled 1",
                "trade 2<-3 1@105",
                "filled 2",
                "cancelled 3 unfilled 0.5",
            ],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "a market sell hits the best bids",
            setup: vec![lim(1, Buy, "99", "1", Gtc), lim(2, Buy, "100", "1", Gtc)],
            cmd: mkt(3, Sell, "1.5", Ioc),
            events: &[
                "accepted 3",
                "trade 2<-3 1@100",
                "filled 2",
                "trade 1<-3 0.5@99",
                "filled 3",
            ],
            bids: &["0.5@99"],
            asks: &[],
        },
        Case {
            name: "a market order on an empty book is cancelled",
            setup: vec![],
            cmd: mkt(1, Buy, "1", Ioc),
            events: &["accepted 1", "cancelled 1 unfilled 1"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "a market order with gtc never rests",
            setup: vec![lim(1, Sell, "100", "1", Gtc)],
            cmd: mkt(2, Buy, "2", Gtc),
            events: &[
                "accepted 2",
                "trade 1<-2 1@100",
                "filled 1",
                "cancelled 2 unfilled 1",
            ],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "ioc trades what it can and cancels the rest",
            setup: vec![lim(1, Sell, "100", "1", Gtc), lim(2, Sell, "101", "1", Gtc)],
            cmd: lim(3, Buy, "100", "3", Ioc),
            events: &[
                "accepted 3",
                "trade 1<-3 1@100",
                "filled 1",
                "cancelled 3 unfilled 2",
            ],
            bids: &[],
            asks: &["1@101"],
        },
        Case {
            name: "ioc that does not cross is cancelled whole",
            setup: vec![lim(1, Sell, "101", "1", Gtc)],
            cmd: lim(2, Buy, "100", "1", Ioc),
            events: &["accepted 2", "cancelled 2 unfilled 1"],
            bids: &[],
            asks: &["1@101"],
        },
        Case {
            name: "fok fills completely across levels",
            setup: vec![lim(1, Sell, "100", "1", Gtc), lim(2, Sell, "101", "1", Gtc)],
            cmd: lim(3, Buy, "101", "1.5", Fok),
            events: &[
                "accepted 3",
                "trade 1<-3 1@100",
                "filled 1",
                "trade 2<-3 0.5@101",
                "filled 3",
            ],
            bids: &[],
            asks: &["0.5@101"],
        },
        Case {
            name: "fok that cannot fill completely is rejected and trades nothing",
            setup: vec![lim(1, Sell, "100", "1", Gtc)],
            cmd: lim(2, Buy, "100", "1.5", Fok),
            events: &["rejected 2 fok_unfillable"],
            bids: &[],
            asks: &["1@100"],
        },
        Case {
            name: "fok does not count liquidity beyond its limit",
            setup: vec![lim(1, Sell, "100", "1", Gtc), lim(2, Sell, "102", "5", Gtc)],
            cmd: lim(3, Buy, "101", "2", Fok),
            events: &["rejected 3 fok_unfillable"],
            bids: &[],
            asks: &["1@100", "5@102"],
        },
        Case {
            name: "a market fok fills at any price or not at all",
            setup: vec![lim(1, Sell, "100", "1", Gtc)],
            cmd: mkt(2, Buy, "2", Fok),
            events: &["rejected 2 fok_unfillable"],
            bids: &[],
            asks: &["1@100"],
        },
        Case {
            name: "post-only that would take is rejected",
            setup: vec![lim(1, Sell, "100", "1", Gtc)],
            cmd: lim(2, Buy, "100", "1", PostOnly),
            events: &["rejected 2 post_only_would_take"],
            bids: &[],
            asks: &["1@100"],
        },
        Case {
            name: "post-only that does not cross rests",
            setup: vec![lim(1, Sell, "100", "1", Gtc)],
            cmd: lim(2, Buy, "99.99", "1", PostOnly),
            events: &["accepted 2", "rested 2 1@99.99"],
            bids: &["1@99.99"],
            asks: &["1@100"],
        },
        Case {
            name: "a duplicate id of a resting order is rejected",
            setup: vec![lim(1, Buy, "100", "1", Gtc)],
            cmd: lim(1, Sell, "200", "1", Gtc),
            events: &["rejected 1 duplicate_order_id"],
            bids: &["1@100"],
            asks: &[],
        },
        Case {
            name: "a duplicate id across markets is rejected",
            setup: vec![lim(1, Buy, "100", "1", Gtc)],
            cmd: order(1, 101, "ETH-USD", Buy, Limit, Some("10"), "1", Gtc, none),
            events: &["rejected 1 duplicate_order_id"],
            bids: &["1@100"],
            asks: &[],
        },
        Case {
            name: "cancel by the owner removes the order",
            setup: vec![lim(1, Buy, "100", "1", Gtc), lim(2, Buy, "100", "2", Gtc)],
            cmd: cxl(1, 101),
            events: &["cancelled 1 requested 1"],
            bids: &["2@100"],
            asks: &[],
        },
        Case {
            name: "cancel from someone else is rejected and the order stays",
            setup: vec![lim(1, Buy, "100", "1", Gtc)],
            cmd: cxl(1, 999),
            events: &["rejected 1 not_owner"],
            bids: &["1@100"],
            asks: &[],
        },
        Case {
            name: "cancel of an unknown order is a no-op",
            setup: vec![lim(1, Buy, "100", "1", Gtc)],
            cmd: cxl(42, 142),
            events: &["rejected 42 unknown_order"],
            bids: &["1@100"],
            asks: &[],
        },
        Case {
            name: "cancel of a filled order is a no-op",
            setup: vec![lim(1, Buy, "100", "1", Gtc), lim(2, Sell, "100", "1", Gtc)],
            cmd: cxl(1, 101),
            events: &["rejected 1 unknown_order"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "cancel of a cancelled order is a no-op",
            setup: vec![lim(1, Buy, "100", "1", Gtc), cxl(1, 101)],
            cmd: cxl(1, 101),
            events: &["rejected 1 unknown_order"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "cancelling from the middle of a level keeps fifo for the others",
            setup: vec![
                lim(1, Sell, "100", "1", Gtc),
                lim(2, Sell, "100", "1", Gtc),
                lim(3, Sell, "100", "1", Gtc),
                cxl(2, 102),
            ],
            cmd: lim(4, Buy, "100", "2", Gtc),
            events: &[
                "accepted 4",
                "trade 1<-4 1@100",
                "filled 1",
                "trade 3<-4 1@100",
                "filled 3",
                "filled 4",
            ],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "without self-trade prevention an owner trades with itself",
            setup: vec![own(1, 7, Sell, "100", "1", none)],
            cmd: own(2, 7, Buy, "100", "1", none),
            events: &["accepted 2", "trade 1<-2 1@100", "filled 1", "filled 2"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "cancel-resting cancels the own maker and matches the next",
            setup: vec![
                own(1, 7, Sell, "100", "1", none),
                own(2, 8, Sell, "100", "1", none),
            ],
            cmd: own(3, 7, Buy, "100", "1", CancelResting),
            events: &[
                "accepted 3",
                "cancelled 1 self_trade 1",
                "trade 2<-3 1@100",
                "filled 2",
                "filled 3",
            ],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "cancel-incoming keeps earlier trades and cancels the remainder",
            setup: vec![
                own(1, 8, Sell, "100", "1", none),
                own(2, 7, Sell, "100", "1", none),
            ],
            cmd: own(3, 7, Buy, "100", "3", CancelIncoming),
            events: &[
                "accepted 3",
                "trade 1<-3 1@100",
                "filled 1",
                "cancelled 3 self_trade 2",
            ],
            bids: &[],
            asks: &["1@100"],
        },
        Case {
            name: "fok with cancel-incoming cannot count liquidity behind an own order",
            setup: vec![
                own(1, 7, Sell, "100", "1", none),
                own(2, 8, Sell, "100", "1", none),
            ],
            cmd: order(
                3,
                7,
                "BTC-USD",
                Buy,
                Limit,
                Some("100"),
                "1",
                Fok,
                CancelIncoming,
            ),
            events: &["rejected 3 fok_unfillable"],
            bids: &[],
            asks: &["2@100"],
        },
        Case {
            name: "fok with cancel-resting skips own orders when counting",
            setup: vec![
                own(1, 7, Sell, "100", "5", none),
                own(2, 8, Sell, "100", "1", none),
            ],
            cmd: order(
                3,
                7,
                "BTC-USD",
                Buy,
                Limit,
                Some("100"),
                "2",
                Fok,
                CancelResting,
            ),
            events: &["rejected 3 fok_unfillable"],
            bids: &[],
            asks: &["6@100"],
        },
        Case {
            name: "fok with cancel-resting fills from others and cancels own makers",
            setup: vec![
                own(1, 7, Sell, "100", "5", none),
                own(2, 8, Sell, "100", "2", none),
            ],
            cmd: order(
                3,
                7,
                "BTC-USD",
                Buy,
                Limit,
                Some("100"),
                "2",
                Fok,
                CancelResting,
            ),
            events: &[
                "accepted 3",
                "cancelled 1 self_trade 5",
                "trade 2<-3 2@100",
                "filled 2",
                "filled 3",
            ],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "orders in another market do not interact",
            setup: vec![order(
                1,
                1,
                "ETH-USD",
                Sell,
                Limit,
                Some("10"),
                "1",
                Gtc,
                none,
            )],
            cmd: lim(2, Buy, "10", "1", Gtc),
            events: &["accepted 2", "rested 2 1@10"],
            bids: &["1@10"],
            asks: &[],
        },
        Case {
            name: "cancel works across markets by global id",
            setup: vec![order(
                1,
                5,
                "ETH-USD",
                Sell,
                Limit,
                Some("10"),
                "1",
                Gtc,
                none,
            )],
            cmd: cxl(1, 5),
            events: &["cancelled 1 requested 1"],
            bids: &[],
            asks: &[],
        },
        // Validation: rejected, never rounded, nothing changes.
        Case {
            name: "unknown market",
            setup: vec![],
            cmd: order(1, 1, "DOGE-USD", Buy, Limit, Some("1"), "1", Gtc, none),
            events: &["rejected 1 unknown_market"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "off-tick price",
            setup: vec![],
            cmd: lim(1, Buy, "100.001", "1", Gtc),
            events: &["rejected 1 off_tick"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "off-tick price for a coarse tick",
            setup: vec![],
            cmd: order(1, 1, "ETH-USD", Buy, Limit, Some("10.01"), "1", Gtc, none),
            events: &["rejected 1 off_tick"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "off-lot quantity",
            setup: vec![],
            cmd: lim(1, Buy, "100", "0.00001", Gtc),
            events: &["rejected 1 off_lot"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "zero price",
            setup: vec![],
            cmd: lim(1, Buy, "0", "1", Gtc),
            events: &["rejected 1 invalid_price"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "negative price",
            setup: vec![],
            cmd: lim(1, Buy, "-1", "1", Gtc),
            events: &["rejected 1 invalid_price"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "absurdly large price",
            setup: vec![],
            cmd: lim(1, Buy, "79228162514264337593543950335", "1", Gtc),
            events: &["rejected 1 invalid_price"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "zero quantity",
            setup: vec![],
            cmd: lim(1, Buy, "100", "0", Gtc),
            events: &["rejected 1 invalid_quantity"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "negative quantity",
            setup: vec![],
            cmd: lim(1, Buy, "100", "-1", Gtc),
            events: &["rejected 1 invalid_quantity"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "a limit order without a price",
            setup: vec![],
            cmd: order(1, 1, "BTC-USD", Buy, Limit, None, "1", Gtc, none),
            events: &["rejected 1 missing_price"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "a market order with a price",
            setup: vec![],
            cmd: order(1, 1, "BTC-USD", Buy, Market, Some("100"), "1", Ioc, none),
            events: &["rejected 1 unexpected_price"],
            bids: &[],
            asks: &[],
        },
        Case {
            name: "a post-only market order",
            setup: vec![],
            cmd: mkt(1, Buy, "1", PostOnly),
            events: &["rejected 1 invalid_time_in_force"],
            bids: &[],
            asks: &[],
        },
    ]
}

#[test]
fn every_rule() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut ex = exchange();
        for cmd in case.setup {
            ex.execute(cmd);
        }
        let before = ex.digest();
        let events: Vec<String> = ex.execute(case.cmd).iter().map(show).collect();
        let book = ex.market("BTC-USD").expect("market").depth(usize::MAX);
        let (bids, asks) = (levels(&book.bids), levels(&book.asks));
        if events != case.events || bids != case.bids || asks != case.asks {
            failures.push(format!(
                "{}:\n  events {events:?}\n  want   {:?}\n  bids {bids:?} want {:?}\n  asks {asks:?} want {:?}",
                case.name, case.events, case.bids, case.asks
            ));
        }
        if events.iter().all(|e| e.starts_with("rejected")) && ex.digest() != before {
            failures.push(format!(
                "{}: a rejected command changed the state",
                case.name
            ));
        }
        if let Err(e) = ex.check_invariants() {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing rules:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn trade_events_carry_owners_market_and_side() {
    let mut ex = exchange();
    ex.execute(own(1, 7, Buy, "100", "1", SelfTradePrevention::None));
    let events = ex.execute(own(2, 8, Sell, "99", "0.25", SelfTradePrevention::None));
    assert_eq!(
        events[1],
        Event::Trade {
            market: "BTC-USD".into(),
            maker: OrderId(1),
            taker: OrderId(2),
            maker_owner: OwnerId(7),
            taker_owner: OwnerId(8),
            price: d("100"),
            quantity: d("0.25"),
            taker_side: Sell,
        }
    );
}

#[test]
fn order_state_follows_the_order() {
    let mut ex = exchange();
    ex.execute(lim(1, Buy, "100", "2", Gtc));
    let state = ex.order(OrderId(1)).expect("resting");
    assert_eq!(state.status, OrderStatus::Open);
    assert_eq!(
        (state.quantity, state.filled, state.remaining()),
        (d("2"), d("0"), d("2"))
    );
    assert_eq!(
        (state.owner, state.side, state.price),
        (OwnerId(101), Buy, Some(d("100")))
    );
    assert_eq!(state.market, "BTC-USD");

    ex.execute(lim(2, Sell, "100", "0.5", Gtc));
    let state = ex.order(OrderId(1)).expect("resting");
    assert_eq!(state.status, OrderStatus::PartiallyFilled);
    assert_eq!((state.filled, state.remaining()), (d("0.5"), d("1.5")));

    // Finished orders are dropped from the engine.
    assert_eq!(ex.order(OrderId(2)), None);
    ex.execute(cxl(1, 101));
    assert_eq!(ex.order(OrderId(1)), None);
    assert_eq!(ex.resting_orders(), 0);
}

#[test]
fn best_prices_and_depth_are_best_first() {
    let mut ex = exchange();
    for (id, side, price, qty) in [
        (1, Buy, "99", "1"),
        (2, Buy, "100", "1"),
        (3, Buy, "100", "2"),
        (4, Buy, "98", "1"),
        (5, Sell, "102", "1"),
        (6, Sell, "101", "3"),
        (7, Sell, "103", "1"),
    ] {
        ex.execute(lim(id, side, price, qty, Gtc));
    }
    let book = ex.market("BTC-USD").expect("market");
    assert_eq!(
        (book.best_bid(), book.best_ask()),
        (Some(d("100")), Some(d("101")))
    );
    let depth = book.depth(2);
    assert_eq!(levels(&depth.bids), ["3@100", "1@99"]);
    assert_eq!(levels(&depth.asks), ["3@101", "1@102"]);
    assert_eq!(book.len(), 7);
    let resting = ex.resting("BTC-USD", Buy).expect("market");
    let ids: Vec<u128> = resting.iter().map(|o| o.id.0).collect();
    assert_eq!(ids, [2, 3, 1, 4]);
    let empty = ex.market("ETH-USD").expect("market");
    assert_eq!(
        (empty.best_bid(), empty.best_ask(), empty.is_empty()),
        (None, None, true)
    );
    assert!(ex.market("NOPE").is_none());
    let names: Vec<&str> = ex.markets().map(|b| b.name()).collect();
    assert_eq!(names, ["BTC-USD", "ETH-USD"]);
}

#[test]
fn invalid_markets_are_errors() {
    let cases = [
        (
            vec![MarketSpec::new("", d("1"), d("1"))],
            Error::EmptyMarketName,
        ),
        (
            vec![MarketSpec::new("A", d("0"), d("1"))],
            Error::InvalidTickSize {
                market: "A".into(),
                value: d("0"),
            },
        ),
        (
            vec![MarketSpec::new("A", d("1"), d("-1"))],
            Error::InvalidLotSize {
                market: "A".into(),
                value: d("-1"),
            },
        ),
        (
            vec![
                MarketSpec::new("A", d("1"), d("1")),
                MarketSpec::new("A", d("2"), d("2")),
            ],
            Error::DuplicateMarket("A".into()),
        ),
    ];
    for (specs, want) in cases {
        assert_eq!(Exchange::new(specs).err(), Some(want.clone()), "{want}");
    }
    assert_eq!(
        Error::DuplicateMarket("A".into()).to_string(),
        "duplicate market A"
    );
}

#[test]
fn json_names_are_snake_case() {
    let cmd = order(
        7,
        1,
        "BTC-USD",
        Buy,
        Limit,
        Some("100.25"),
        "1.5",
        PostOnly,
        CancelResting,
    );
    let json = serde_json::to_value(&cmd).expect("json");
    assert_eq!(json["op"], "place");
    assert_eq!(json["id"], "7");
    assert_eq!(json["side"], "buy");
    assert_eq!(json["order_type"], "limit");
    assert_eq!(json["time_in_force"], "post_only");
    assert_eq!(json["stp"], "cancel_resting");
    assert_eq!(json["price"], "100.25");
    let back: Command = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, cmd);
    let event = serde_json::to_value(Event::Rejected {
        id: OrderId(1),
        reason: RejectReason::OffTick,
    })
    .expect("json");
    assert_eq!(
        event,
        serde_json::json!({"event": "rejected", "id": "1", "reason": "off_tick"})
    );
    assert_eq!(
        RejectReason::FokUnfillable.to_string(),
        "fill-or-kill order cannot be filled completely"
    );
    assert_eq!(
        "340282366920938463463374607431768211455".parse::<OrderId>(),
        Ok(OrderId(u128::MAX))
    );
    assert_eq!(
        OrderId(u128::MAX).to_string(),
        "340282366920938463463374607431768211455"
    );
}

#[test]
fn snapshot_restores_the_same_state() {
    let mut ex = exchange();
    for id in 1..=20u128 {
        let side = if id % 2 == 0 { Buy } else { Sell };
        let price = if side == Buy {
            format!("{}", 90 + id % 7)
        } else {
            format!("{}", 100 + id % 5)
        };
        ex.execute(lim(id, side, &price, "1.5", Gtc));
    }
    ex.execute(lim(100, Sell, "97", "2", Gtc)); // partial fills
    let snap = ex.snapshot();
    let json = serde_json::to_string(&snap).expect("json");
    let back: Snapshot = serde_json::from_str(&json).expect("json");
    let mut copy = Exchange::restore(back).expect("valid snapshot");
    assert_eq!(copy.digest(), ex.digest());
    copy.check_invariants().expect("invariants");
    assert_eq!(copy.order(OrderId(96)), ex.order(OrderId(96)));
    // Both behave the same afterwards.
    let cmd = mkt(200, Sell, "5", Ioc);
    assert_eq!(copy.execute(cmd.clone()), ex.execute(cmd));
    assert_eq!(copy.digest(), ex.digest());
}

#[test]
fn digest_covers_priority_and_quantities() {
    let build = |cmds: Vec<Command>| {
        let mut ex = exchange();
        for c in cmds {
            ex.execute(c);
        }
        ex.digest()
    };
    let a = build(vec![
        lim(1, Buy, "100", "1", Gtc),
        lim(2, Buy, "100", "1", Gtc),
    ]);
    let fifo_swapped = build(vec![
        lim(2, Buy, "100", "1", Gtc),
        lim(1, Buy, "100", "1", Gtc),
    ]);
    let qty = build(vec![
        lim(1, Buy, "100", "1", Gtc),
        lim(2, Buy, "100", "2", Gtc),
    ]);
    let empty = build(vec![]);
    assert_ne!(a, fifo_swapped);
    assert_ne!(a, qty);
    assert_ne!(a, empty);
    assert_eq!(
        a,
        build(vec![
            lim(1, Buy, "100", "1", Gtc),
            lim(2, Buy, "100", "1", Gtc)
        ])
    );
    // The same state hashes the same on every machine and every run.
    let hex = |digest: [u8; 32]| {
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(
        hex(empty),
        "2a9c2e02ce30e964c6f917cba2edef33db38aad4fb073ad61e4e6249e37f1191"
    );
    assert_eq!(
        hex(a),
        "e2c3cfa37a6ba8272de42632c50e464cd8c38b422415660d3a12766bec7f9490"
    );
}

#[test]
fn invalid_snapshots_are_refused() {
    let mut ex = exchange();
    ex.execute(lim(1, Buy, "100", "1", Gtc));
    ex.execute(lim(2, Sell, "101", "1", Gtc));
    let good = ex.snapshot();

    let mut crossed = good.clone();
    crossed.markets[0].bids[0].price = d("102");
    let mut dup = good.clone();
    dup.markets[0].asks[0].id = OrderId(1);
    let mut off_tick = good.clone();
    off_tick.markets[0].asks[0].price = d("101.001");
    let mut zero = good.clone();
    zero.markets[0].asks[0].quantity = d("0");
    let mut version = good.clone();
    version.version = 9;
    for (name, snap) in [
        ("crossed", crossed),
        ("dup", dup),
        ("off tick", off_tick),
        ("zero", zero),
        ("version", version),
    ] {
        assert!(
            matches!(Exchange::restore(snap), Err(Error::InvalidSnapshot(_))),
            "{name} snapshot accepted"
        );
    }
    assert!(Exchange::restore(good).is_ok());
}

#[test]
fn many_cancels_keep_fifo_and_bounded_queues() {
    let mut ex = exchange();
    for id in 1..=200u128 {
        ex.execute(lim(id, Sell, "100", "1", Gtc));
    }
    // Cancel all but every tenth order, in a scattered order.
    for id in (1..=200u128).rev().filter(|id| id % 10 != 0) {
        assert_eq!(ex.execute(cxl(id, 100 + id as u64)).len(), 1);
        ex.check_invariants().expect("invariants after a cancel");
    }
    let expected: Vec<u128> = (1..=20).map(|k| k * 10).collect();
    let resting = ex.resting("BTC-USD", Sell).expect("market");
    assert_eq!(resting.iter().map(|o| o.id.0).collect::<Vec<_>>(), expected);
    // The survivors still fill in time order.
    let events: Vec<String> = ex
        .execute(mkt(999, Buy, "3", Ioc))
        .iter()
        .map(show)
        .collect();
    assert_eq!(
        events,
        [
            "accepted 999",
            "trade 10<-999 1@100",
            "filled 10",
            "trade 20<-999 1@100",
            "filled 20",
            "trade 30<-999 1@100",
            "filled 30",
            "filled 999"
        ]
    );
    // A re-used id of a cancelled order is a new order at the back of the queue.
    ex.execute(lim(1, Sell, "100", "1", Gtc));
    let resting = ex.resting("BTC-USD", Sell).expect("market");
    assert_eq!(resting.last().map(|o| o.id.0), Some(1));
    assert_eq!(resting.len(), 18);
    ex.check_invariants().expect("invariants");
}
