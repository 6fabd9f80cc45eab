//! Criterion benchmarks of the matcher, per operation, on books of 1k, 100k
//! and 1M resting orders:
//!
//! - `place`: resting limit orders only (the book is trimmed back, untimed, after each chunk);
//! - `cancel`: alternating resting places and cancels of random resting orders;
//! - `crossing`: alternating resting places near the top and takers (market
//!   orders and crossing limits) that consume exactly one order each;
//! - `mix`: 50% resting limits, 35% cancels of resting orders, 15% market orders;
//! - `matchcore-mix`: the same `mix` stream through `matchcore` 0.4 for comparison.
//!
//! Every workload keeps the book size steady. Commands are generated in
//! chunks outside the timed section; the timed section is `execute_into` on
//! each command (including dropping the command and its events).
//!
//! Run: `cargo bench -p orderbook-core` (about two minutes).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use orderbook_core::{
    Command, Event, Exchange, MarketSpec, NewOrder, OrderId, OrderType, OwnerId,
    SelfTradePrevention, Side, TimeInForce,
};
use rust_decimal::Decimal;

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
const CHUNK: usize = 1024;
/// The mid price in ticks (tick 0.01: 10000.00).
const MID: u64 = 1_000_000;
/// Near-the-top band: 1..=NEAR ticks from the mid; the deep band spans DEEP
/// ticks beyond it on each side (about 500 levels in all, as in a real book
/// where resting orders crowd near the top).
const NEAR: u64 = 5;
const DEEP: u64 = 250;
/// Lots of every near order and of every taker: a taker consumes exactly one near order.
const TAKE_LOTS: u64 = 5;

#[derive(Clone, Copy, Debug)]
enum Kind {
    NearPlace,
    DeepPlace,
    Cancel,
    Market,
    CrossLimit,
}

const PLACE: &[Kind] = &[Kind::DeepPlace];
const CANCEL: &[Kind] = &[Kind::DeepPlace, Kind::Cancel];
const CROSSING: &[Kind] = &[
    Kind::NearPlace,
    Kind::Market,
    Kind::NearPlace,
    Kind::CrossLimit,
];
/// 10 places (3 near, 7 deep), 7 cancels, 3 market orders.
const MIX: &[Kind] = {
    use Kind::*;
    &[
        NearPlace, DeepPlace, Cancel, Market, DeepPlace, Cancel, DeepPlace, Cancel, NearPlace,
        Market, DeepPlace, Cancel, DeepPlace, Cancel, NearPlace, Market, DeepPlace, Cancel,
        DeepPlace, Cancel,
    ]
};

/// An engine-neutral operation. Every op takes the next number of one
/// counter: it is the id of a new order and matchcore's sequence number
/// (matchcore derives its order ids from sequence numbers).
#[derive(Clone, Copy, Debug)]
enum Op {
    Place {
        id: u64,
        side: Side,
        price: u64,
        lots: u64,
    },
    Cancel {
        id: u64,
        seq: u64,
    },
    Market {
        id: u64,
        side: Side,
        lots: u64,
    },
    Cross {
        id: u64,
        side: Side,
        price: u64,
        lots: u64,
    },
}

/// A deterministic stream generator that knows which deep orders are resting.
struct Gen {
    rng: u64,
    next_id: u64,
    deep: Vec<u64>,
    near_side: Side,
    taker_target: Side,
    pos: usize,
}

impl Gen {
    fn new() -> Gen {
        Gen {
            rng: 0x9e37_79b9_7f4a_7c15,
            next_id: 0,
            deep: Vec::new(),
            near_side: Side::Sell,
            taker_target: Side::Sell,
            pos: 0,
        }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    fn op(&mut self, kind: Kind) -> Op {
        match kind {
            Kind::NearPlace => {
                let side = self.near_side;
                self.near_side = side.opposite();
                let off = 1 + self.rand() % NEAR;
                let price = if side == Side::Buy {
                    MID - off
                } else {
                    MID + off
                };
                Op::Place {
                    id: self.id(),
                    side,
                    price,
                    lots: TAKE_LOTS,
                }
            }
            Kind::DeepPlace => {
                let r = self.rand();
                let side = if r & 1 == 0 { Side::Buy } else { Side::Sell };
                let off = NEAR + 1 + (r >> 1) % DEEP;
                let price = if side == Side::Buy {
                    MID - off
                } else {
                    MID + off
                };
                let id = self.id();
                self.deep.push(id);
                Op::Place {
                    id,
                    side,
                    price,
                    lots: 1 + (r >> 20) % 10,
                }
            }
            Kind::Cancel => {
                if self.deep.is_empty() {
                    return self.op(Kind::DeepPlace);
                }
                let i = (self.rand() % self.deep.len() as u64) as usize;
                Op::Cancel {
                    id: self.deep.swap_remove(i),
                    seq: self.id(),
                }
            }
            Kind::Market | Kind::CrossLimit => {
                let target = self.taker_target;
                self.taker_target = target.opposite();
                let side = target.opposite();
                let id = self.id();
                if let Kind::Market = kind {
                    Op::Market {
                        id,
                        side,
                        lots: TAKE_LOTS,
                    }
                } else {
                    // Crosses the whole near band; fills exactly one near order.
                    let price = if side == Side::Buy {
                        MID + NEAR
                    } else {
                        MID - NEAR
                    };
                    Op::Cross {
                        id,
                        side,
                        price,
                        lots: TAKE_LOTS,
                    }
                }
            }
        }
    }

    fn next(&mut self, pattern: &[Kind]) -> Op {
        let kind = pattern[self.pos % pattern.len()];
        self.pos += 1;
        self.op(kind)
    }

    /// The ops that build a book of `n` resting orders (a tenth of them near the top).
    fn initial(&mut self, n: usize) -> Vec<Op> {
        let near = (n / 10).max(2);
        (0..n)
            .map(|i| {
                self.op(if i < near {
                    Kind::NearPlace
                } else {
                    Kind::DeepPlace
                })
            })
            .collect()
    }
}

fn to_command(op: Op) -> Command {
    let place = |id: u64, side, order_type, price: Option<u64>, lots: u64, tif| {
        Command::Place(NewOrder {
            id: OrderId(u128::from(id)),
            owner: OwnerId(id % 64),
            market: "BTC-USD".to_owned(),
            side,
            order_type,
            price: price.map(|p| Decimal::new(p as i64, 2)),
            quantity: Decimal::new(lots as i64, 4),
            time_in_force: tif,
            stp: SelfTradePrevention::None,
        })
    };
    match op {
        Op::Place {
            id,
            side,
            price,
            lots,
        } => place(
            id,
            side,
            OrderType::Limit,
            Some(price),
            lots,
            TimeInForce::Gtc,
        ),
        Op::Cancel { id, .. } => Command::Cancel {
            id: OrderId(u128::from(id)),
            owner: OwnerId(id % 64),
        },
        Op::Market { id, side, lots } => {
            place(id, side, OrderType::Market, None, lots, TimeInForce::Ioc)
        }
        Op::Cross {
            id,
            side,
            price,
            lots,
        } => place(
            id,
            side,
            OrderType::Limit,
            Some(price),
            lots,
            TimeInForce::Gtc,
        ),
    }
}

fn mc_command(op: Op) -> matchcore::Command {
    use matchcore as mc;
    let side = |s: Side| {
        if s == Side::Buy {
            mc::Side::Buy
        } else {
            mc::Side::Sell
        }
    };
    let (id, kind) = match op {
        Op::Place {
            id,
            side: s,
            price,
            lots,
        }
        | Op::Cross {
            id,
            side: s,
            price,
            lots,
        } => (
            id,
            mc::CommandKind::Submit(mc::SubmitCmd {
                order: mc::NewOrder::Limit(mc::LimitOrder::new(
                    mc::Price(price),
                    mc::QuantityPolicy::Standard {
                        quantity: mc::Quantity(lots),
                    },
                    mc::OrderFlags::new(side(s), false, mc::TimeInForce::Gtc),
                )),
            }),
        ),
        Op::Cancel { id, seq } => (
            seq,
            mc::CommandKind::Cancel(mc::CancelCmd {
                order_id: mc::OrderId(id),
                order_kind: mc::OrderKind::Limit,
            }),
        ),
        Op::Market { id, side: s, lots } => (
            id,
            mc::CommandKind::Submit(mc::SubmitCmd {
                order: mc::NewOrder::Market(mc::MarketOrder::new(
                    mc::Quantity(lots),
                    side(s),
                    false,
                )),
            }),
        ),
    };
    mc::Command {
        meta: mc::CommandMeta {
            sequence_number: mc::SequenceNumber(id),
            timestamp: mc::Timestamp(1),
        },
        kind,
    }
}

/// Our engine plus the stream that drives it.
struct Ours {
    ex: Exchange,
    stream: Gen,
    pattern: &'static [Kind],
    trim: bool,
    chunk: Vec<Command>,
    out: Vec<Event>,
}

impl Ours {
    fn new(n: usize, pattern: &'static [Kind], trim: bool) -> Ours {
        let mut ex = Exchange::new(vec![MarketSpec::new(
            "BTC-USD",
            Decimal::new(1, 2),
            Decimal::new(1, 4),
        )])
        .expect("market");
        let mut stream = Gen::new();
        let mut out = Vec::new();
        for op in stream.initial(n) {
            out.clear();
            ex.execute_into(to_command(op), &mut out);
        }
        assert_eq!(ex.resting_orders(), n);
        Ours {
            ex,
            stream,
            pattern,
            trim,
            chunk: Vec::with_capacity(CHUNK),
            out,
        }
    }

    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let k = left.min(CHUNK as u64) as usize;
            left -= k as u64;
            self.chunk
                .extend((0..k).map(|_| to_command(self.stream.next(self.pattern))));
            let start = Instant::now();
            let mut rejected = 0usize;
            for cmd in self.chunk.drain(..) {
                self.out.clear();
                self.ex.execute_into(black_box(cmd), &mut self.out);
                rejected += usize::from(matches!(self.out.last(), Some(Event::Rejected { .. })));
            }
            total += start.elapsed();
            assert_eq!(rejected, 0, "the stream must only hold valid commands");
            black_box(&self.out);
            if self.trim {
                // Place-only: cancel what this chunk added so the book keeps its size.
                for _ in 0..k {
                    if let Some(id) = self.stream.deep.pop() {
                        self.out.clear();
                        self.ex
                            .execute_into(to_command(Op::Cancel { id, seq: 0 }), &mut self.out);
                    }
                }
            }
        }
        total
    }
}

/// matchcore driven by the same stream.
struct Theirs {
    book: matchcore::OrderBook,
    stream: Gen,
    chunk: Vec<matchcore::Command>,
}

impl Theirs {
    fn new(n: usize) -> Theirs {
        let mut book = matchcore::OrderBook::new("BTC-USD");
        let mut stream = Gen::new();
        for op in stream.initial(n) {
            let outcome = book.execute(&mc_command(op));
            assert!(
                !matches!(outcome, matchcore::CommandOutcome::Rejected(_)),
                "matchcore rejected {op:?}: {outcome}"
            );
        }
        Theirs {
            book,
            stream,
            chunk: Vec::with_capacity(CHUNK),
        }
    }

    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let k = left.min(CHUNK as u64) as usize;
            left -= k as u64;
            for _ in 0..k {
                let op = self.stream.next(MIX);
                self.chunk.push(mc_command(op));
            }
            let start = Instant::now();
            let mut rejected = 0usize;
            for cmd in &self.chunk {
                let outcome = self.book.execute(black_box(cmd));
                rejected += usize::from(matches!(outcome, matchcore::CommandOutcome::Rejected(_)));
                black_box(outcome);
            }
            total += start.elapsed();
            assert_eq!(rejected, 0, "matchcore rejected part of the stream");
            self.chunk.clear();
        }
        total
    }
}

fn benches(c: &mut Criterion) {
    // States are built lazily inside the closures, so a filtered run
    // (`cargo bench -p orderbook-core -- mix/1000`) builds only what it measures.
    for (name, pattern, trim) in [
        ("place", PLACE, true),
        ("cancel", CANCEL, false),
        ("crossing", CROSSING, false),
        ("mix", MIX, false),
    ] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        for n in SIZES {
            let mut state: Option<Ours> = None;
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                let ours = state.get_or_insert_with(|| Ours::new(n, pattern, trim));
                b.iter_custom(|iters| ours.run(iters))
            });
            if let Some(ours) = state {
                ours.ex
                    .check_invariants()
                    .expect("invariants hold after the benchmark");
                if !trim {
                    let size = ours.ex.resting_orders();
                    assert!(size.abs_diff(n) <= n / 10 + 10, "book size drifted: {size}");
                }
            }
        }
        group.finish();
    }
    let mut group = c.benchmark_group("matchcore-mix");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let mut state: Option<Theirs> = None;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            let theirs = state.get_or_insert_with(|| Theirs::new(n));
            b.iter_custom(|iters| theirs.run(iters))
        });
    }
    group.finish();
}

criterion_group! {
    name = orderbook;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(orderbook);
