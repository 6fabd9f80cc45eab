//! The exchange: all markets, the global order index and the matching algorithm.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::book::{Book, FoldState, Orders, RestingOrder, STALE_SLACK};
use crate::error::Error;
use crate::types::{
    CancelReason, Command, Event, MarketSpec, NewOrder, OrderId, OrderState, OrderStatus,
    OrderType, OwnerId, RejectReason, SelfTradePrevention, Side, TimeInForce,
};
use crate::units::{Unit, UnitError};

/// The most orders one book can hold (level indexes are `u32`).
const MAX_ORDERS_PER_BOOK: usize = (u32::MAX - 1) as usize;

/// A serializable copy of an exchange's full state (see [`Exchange::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version, currently 1.
    pub version: u32,
    /// Every market, in the order they were added.
    pub markets: Vec<MarketSnapshot>,
}

/// One market of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketSnapshot {
    /// The market.
    pub spec: MarketSpec,
    /// Resting bids in priority order.
    pub bids: Vec<RestingOrder>,
    /// Resting asks in priority order.
    pub asks: Vec<RestingOrder>,
}

/// All markets and the matching engine. See the crate docs for an example.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Books in the order their markets were added (an order's location refers to this).
    books: Vec<Book>,
    /// `(name, index into books)` sorted by name, for lookup and canonical iteration.
    by_name: Vec<(String, u32)>,
    /// Every resting order by id.
    orders: Orders,
    /// Counts queued orders; tells live queue entries from stale ones.
    seq: u64,
    /// Seeds the internal hash maps (never affects a result).
    hash: FoldState,
}

impl Exchange {
    /// An exchange with these markets (names unique and non-empty, tick and lot sizes positive).
    pub fn new(markets: Vec<MarketSpec>) -> Result<Exchange, Error> {
        Exchange::with_hash_seed(markets, 0)
    }

    /// Like [`Exchange::new`], with a seed for the internal hash maps.
    ///
    /// The seed never changes a result, event or digest (no result depends on
    /// a map's iteration order); it changes only where entries land. A node
    /// that accepts order ids chosen by others should pass a secret random
    /// seed so that nobody can craft ids that collide.
    pub fn with_hash_seed(markets: Vec<MarketSpec>, seed: u64) -> Result<Exchange, Error> {
        let hash = FoldState(seed);
        let mut exchange = Exchange {
            books: Vec::new(),
            by_name: Vec::new(),
            orders: Orders::with_hasher(hash),
            seq: 0,
            hash,
        };
        for spec in markets {
            exchange.add_market(spec)?;
        }
        Ok(exchange)
    }

    /// Adds a market.
    pub fn add_market(&mut self, spec: MarketSpec) -> Result<(), Error> {
        if spec.name.is_empty() {
            return Err(Error::EmptyMarketName);
        }
        let tick = Unit::new(spec.tick_size).ok_or_else(|| Error::InvalidTickSize {
            market: spec.name.clone(),
            value: spec.tick_size,
        })?;
        let lot = Unit::new(spec.lot_size).ok_or_else(|| Error::InvalidLotSize {
            market: spec.name.clone(),
            value: spec.lot_size,
        })?;
        let pos = match self
            .by_name
            .binary_search_by(|(n, _)| n.as_str().cmp(&spec.name))
        {
            Ok(_) => return Err(Error::DuplicateMarket(spec.name)),
            Err(pos) => pos,
        };
        let idx = u32::try_from(self.books.len()).map_err(|_| Error::TooManyMarkets)?;
        self.by_name.insert(pos, (spec.name.clone(), idx));
        self.books.push(Book::new(spec, tick, lot, self.hash));
        Ok(())
    }

    /// The book of a market.
    pub fn market(&self, name: &str) -> Option<&Book> {
        self.market_index(name).map(|i| &self.books[i])
    }

    /// All books, sorted by market name.
    pub fn markets(&self) -> impl Iterator<Item = &Book> + '_ {
        self.by_name.iter().map(|&(_, i)| &self.books[i as usize])
    }

    /// The number of resting orders over all markets.
    pub fn resting_orders(&self) -> usize {
        self.orders.len()
    }

    /// All resting orders of one side of a market in priority order (best
    /// price first, then FIFO); `None` for an unknown market.
    pub fn resting(&self, market: &str, side: Side) -> Option<Vec<RestingOrder>> {
        self.market_index(market)
            .map(|m| self.resting_of(&self.books[m], side))
    }

    fn resting_of(&self, book: &Book, side: Side) -> Vec<RestingOrder> {
        let mut out = Vec::new();
        book.for_each_resting(side, &self.orders, |id, o| {
            out.push(RestingOrder {
                id: OrderId(id),
                owner: OwnerId(o.owner),
                price: book.tick.to_decimal(u128::from(book.price_of(o))),
                quantity: book.lot.to_decimal(u128::from(o.remaining)),
                filled: book.lot.to_decimal(u128::from(o.filled)),
            });
        });
        out
    }

    /// The state of a *resting* order (`Open` or `PartiallyFilled`).
    ///
    /// Finished orders (filled, cancelled, rejected) are dropped from the engine
    /// to keep memory bounded, so this returns `None` for them and for unknown
    /// ids; their final state is in the events that finished them.
    pub fn order(&self, id: OrderId) -> Option<OrderState> {
        let slot = self.orders.get(&id.0)?;
        let book = &self.books[slot.market as usize];
        Some(OrderState {
            id,
            owner: OwnerId(slot.owner),
            market: book.spec.name.clone(),
            side: slot.side,
            price: Some(book.tick.to_decimal(u128::from(book.price_of(slot)))),
            quantity: book
                .lot
                .to_decimal(u128::from(slot.remaining) + u128::from(slot.filled)),
            filled: book.lot.to_decimal(u128::from(slot.filled)),
            status: if slot.filled == 0 {
                OrderStatus::Open
            } else {
                OrderStatus::PartiallyFilled
            },
        })
    }

    /// Applies one command and returns its outcome.
    pub fn execute(&mut self, cmd: Command) -> Vec<Event> {
        let mut out = Vec::new();
        self.execute_into(cmd, &mut out);
        out
    }

    /// Applies one command and appends its outcome to `out` (which is not cleared),
    /// so a caller can reuse one buffer.
    pub fn execute_into(&mut self, cmd: Command, out: &mut Vec<Event>) {
        match cmd {
            Command::Place(order) => self.place(order, out),
            Command::Cancel { id, owner } => self.cancel(id, owner, out),
        }
        // Give memory back after mass cancels or fills (amortized O(1): the
        // map shrinks to half its size only after three quarters emptied it).
        let capacity = self.orders.capacity();
        if capacity > 1024 && self.orders.len() < capacity / 4 {
            self.orders.shrink_to(capacity / 2);
        }
    }

    fn market_index(&self, name: &str) -> Option<usize> {
        self.by_name
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|pos| self.by_name[pos].1 as usize)
    }

    fn cancel(&mut self, id: OrderId, owner: OwnerId, out: &mut Vec<Event>) {
        match self.orders.get(&id.0) {
            None => {
                return out.push(Event::Rejected {
                    id,
                    reason: RejectReason::UnknownOrder,
                });
            }
            Some(o) if o.owner != owner.0 => {
                return out.push(Event::Rejected {
                    id,
                    reason: RejectReason::NotOwner,
                });
            }
            Some(_) => {}
        }
        let Some(order) = self.orders.remove(&id.0) else {
            return;
        };
        let book = &mut self.books[order.market as usize];
        book.unrest(&order, &self.orders);
        let remaining = book.lot.to_decimal(u128::from(order.remaining));
        out.push(Event::Cancelled {
            id,
            reason: CancelReason::Requested,
            remaining,
        });
    }

    fn place(&mut self, order: NewOrder, out: &mut Vec<Event>) {
        let id = order.id;
        let reject = |out: &mut Vec<Event>, reason| out.push(Event::Rejected { id, reason });
        let Some(market) = self.market_index(&order.market) else {
            return reject(out, RejectReason::UnknownMarket);
        };
        let book = &mut self.books[market];
        let limit = match (order.order_type, order.price) {
            (OrderType::Limit, None) => return reject(out, RejectReason::MissingPrice),
            (OrderType::Market, Some(_)) => return reject(out, RejectReason::UnexpectedPrice),
            (OrderType::Market, None) => {
                if order.time_in_force == TimeInForce::PostOnly {
                    return reject(out, RejectReason::InvalidTimeInForce);
                }
                None
            }
            (OrderType::Limit, Some(price)) => match book.tick.to_units(price) {
                Ok(ticks) => Some(ticks),
                Err(UnitError::OffGrid) => return reject(out, RejectReason::OffTick),
                Err(_) => return reject(out, RejectReason::InvalidPrice),
            },
        };
        let quantity = match book.lot.to_units(order.quantity) {
            Ok(lots) => lots,
            Err(UnitError::OffGrid) => return reject(out, RejectReason::OffLot),
            Err(_) => return reject(out, RejectReason::InvalidQuantity),
        };
        if self.orders.contains_key(&id.0) {
            return reject(out, RejectReason::DuplicateOrderId);
        }
        if book.len >= MAX_ORDERS_PER_BOOK {
            return reject(out, RejectReason::BookFull);
        }
        let taker = Taker {
            id: id.0,
            owner: order.owner.0,
            side: order.side,
            limit,
            stp: order.stp,
        };
        match order.time_in_force {
            TimeInForce::PostOnly => {
                if let Some(p) = limit
                    && book.crosses(order.side, p)
                {
                    return reject(out, RejectReason::PostOnlyWouldTake);
                }
            }
            TimeInForce::Fok => {
                if !book.can_fill(&taker, quantity, &self.orders) {
                    return reject(out, RejectReason::FokUnfillable);
                }
            }
            TimeInForce::Gtc | TimeInForce::Ioc => {}
        }
        out.push(Event::Accepted { id });
        let (remaining, outcome) = book.take(&taker, quantity, &mut self.orders, out);
        match outcome {
            TakeOutcome::SelfTradeStop => out.push(Event::Cancelled {
                id,
                reason: CancelReason::SelfTrade,
                remaining: book.lot.to_decimal(u128::from(remaining)),
            }),
            TakeOutcome::Done if remaining == 0 => out.push(Event::Filled { id }),
            TakeOutcome::Done => match (limit, order.time_in_force) {
                (Some(price), TimeInForce::Gtc | TimeInForce::PostOnly) => {
                    self.seq += 1;
                    book.insert(
                        &mut self.orders,
                        market as u32,
                        id.0,
                        order.owner.0,
                        order.side,
                        price,
                        remaining,
                        quantity - remaining,
                        self.seq,
                    );
                    out.push(Event::Rested {
                        id,
                        price: book.tick.to_decimal(u128::from(price)),
                        quantity: book.lot.to_decimal(u128::from(remaining)),
                    });
                }
                _ => out.push(Event::Cancelled {
                    id,
                    reason: CancelReason::Unfilled,
                    remaining: book.lot.to_decimal(u128::from(remaining)),
                }),
            },
        }
    }

    /// A copy of the full state: every market and its resting orders in priority order.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: 1,
            markets: self
                .books
                .iter()
                .map(|book| MarketSnapshot {
                    spec: book.spec.clone(),
                    bids: self.resting_of(book, Side::Buy),
                    asks: self.resting_of(book, Side::Sell),
                })
                .collect(),
        }
    }

    /// Rebuilds an exchange from a snapshot, validating it fully (grid, ids, a
    /// non-crossed book): `restore(x.snapshot())` has the same [`Exchange::digest`] as `x`.
    pub fn restore(snapshot: Snapshot) -> Result<Exchange, Error> {
        Exchange::restore_with_hash_seed(snapshot, 0)
    }

    /// [`Exchange::restore`] with a seed for the internal hash maps (see
    /// [`Exchange::with_hash_seed`]).
    pub fn restore_with_hash_seed(snapshot: Snapshot, seed: u64) -> Result<Exchange, Error> {
        let bad = |msg: String| Err(Error::InvalidSnapshot(msg));
        if snapshot.version != 1 {
            return bad(format!("unsupported version {}", snapshot.version));
        }
        let mut exchange = Exchange::with_hash_seed(Vec::new(), seed)?;
        for market in snapshot.markets {
            exchange.add_market(market.spec)?;
            let m = exchange.books.len() - 1;
            for (side, orders) in [(Side::Buy, market.bids), (Side::Sell, market.asks)] {
                for o in orders {
                    let book = &mut exchange.books[m];
                    let name = &book.spec.name;
                    let (Ok(price), Ok(remaining)) =
                        (book.tick.to_units(o.price), book.lot.to_units(o.quantity))
                    else {
                        return bad(format!(
                            "order {} in {name}: price or quantity off grid",
                            o.id
                        ));
                    };
                    let filled = if o.filled.is_zero() {
                        0
                    } else {
                        match book.lot.to_units(o.filled) {
                            Ok(f)
                                if f.checked_add(remaining)
                                    .is_some_and(|t| t <= crate::units::MAX_UNITS) =>
                            {
                                f
                            }
                            _ => {
                                return bad(format!(
                                    "order {} in {name}: invalid filled quantity",
                                    o.id
                                ));
                            }
                        }
                    };
                    if exchange.orders.contains_key(&o.id.0) {
                        return bad(format!("duplicate order id {}", o.id));
                    }
                    if book.len >= MAX_ORDERS_PER_BOOK {
                        return bad(format!("too many orders in {name}"));
                    }
                    exchange.seq += 1;
                    book.insert(
                        &mut exchange.orders,
                        m as u32,
                        o.id.0,
                        o.owner.0,
                        side,
                        price,
                        remaining,
                        filled,
                        exchange.seq,
                    );
                }
            }
            let book = &exchange.books[m];
            if let (Some((bid, _)), Some((ask, _))) = (book.best(Side::Buy), book.best(Side::Sell))
                && bid >= ask
            {
                return bad(format!("market {} is crossed", book.spec.name));
            }
        }
        Ok(exchange)
    }

    /// A SHA-256 digest of the full state: every market (by name) with its
    /// tick and lot size, and every resting order in priority order with its
    /// id, owner, price, remaining and filled quantity. Integers are encoded
    /// little-endian, so the same state gives the same digest on every machine.
    /// It costs one pass over the resting orders (about 50 bytes hashed each).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"orderbook-core/state/v1");
        h.update((self.by_name.len() as u64).to_le_bytes());
        for book in self.markets() {
            h.update((book.spec.name.len() as u64).to_le_bytes());
            h.update(book.spec.name.as_bytes());
            for unit in [book.tick, book.lot] {
                let (m, s) = unit.parts();
                h.update(m.to_le_bytes());
                h.update(s.to_le_bytes());
            }
            for (side, levels) in [(0u8, book.bids.order.len()), (1u8, book.asks.order.len())] {
                h.update([side]);
                h.update((levels as u64).to_le_bytes());
                let side = if side == 0 { Side::Buy } else { Side::Sell };
                let mut buf = [0u8; 48];
                book.for_each_resting(side, &self.orders, |id, slot| {
                    buf[0..16].copy_from_slice(&id.to_le_bytes());
                    buf[16..24].copy_from_slice(&slot.owner.to_le_bytes());
                    buf[24..32].copy_from_slice(&book.price_of(slot).to_le_bytes());
                    buf[32..40].copy_from_slice(&slot.remaining.to_le_bytes());
                    buf[40..48].copy_from_slice(&slot.filled.to_le_bytes());
                    h.update(buf);
                });
            }
        }
        h.finalize().into()
    }

    /// Checks the internal consistency of every book: not crossed, levels'
    /// totals and counts match their live orders, every resting order is in
    /// its level's queue exactly once and has a positive remainder, stale
    /// queue entries stay bounded. Meant for tests and for nodes that verify
    /// their state; costs a pass over all orders.
    pub fn check_invariants(&self) -> Result<(), Error> {
        let fail = |msg: String| Err(Error::Invariant(msg));
        let mut seen = 0usize;
        for (m, book) in self.books.iter().enumerate() {
            let name = &book.spec.name;
            if let (Some((bid, _)), Some((ask, _))) = (book.best(Side::Buy), book.best(Side::Sell))
                && bid >= ask
            {
                return fail(format!("{name}: crossed book, bid {bid} >= ask {ask}"));
            }
            let mut count = 0usize;
            for (side, levels) in [(Side::Buy, &book.bids), (Side::Sell, &book.asks)] {
                if levels.lookup.len() != levels.order.len() {
                    return fail(format!("{name}: level maps disagree"));
                }
                for (&price, &l) in &levels.order {
                    let Some(level) = book.levels.get(l as usize) else {
                        return fail(format!("{name}: dangling level {l}"));
                    };
                    if levels.lookup.get(&price) != Some(&l) || level.price != price {
                        return fail(format!("{name}: level {price} is not where its maps say"));
                    }
                    let (mut n, mut total) = (0u32, 0u128);
                    for e in &level.queue {
                        let Some(o) = e.live(&self.orders) else {
                            continue;
                        };
                        if book.price_of(o) != price
                            || o.side != side
                            || o.level != l
                            || o.market as usize != m
                        {
                            return fail(format!(
                                "{name}: order {} is queued in the wrong level",
                                e.id()
                            ));
                        }
                        if o.remaining == 0 {
                            return fail(format!(
                                "{name}: order {} rests with nothing left",
                                e.id()
                            ));
                        }
                        n += 1;
                        total += u128::from(o.remaining);
                    }
                    if n == 0 || n != level.live || total != level.total {
                        return fail(format!(
                            "{name}: level {price} totals do not match its orders"
                        ));
                    }
                    if level.queue.len() > 2 * n as usize + STALE_SLACK {
                        return fail(format!(
                            "{name}: level {price} holds too many stale entries"
                        ));
                    }
                    count += n as usize;
                }
            }
            if count != book.len {
                return fail(format!(
                    "{name}: {count} orders queued, {} counted",
                    book.len
                ));
            }
            seen += count;
        }
        if seen != self.orders.len() {
            return fail(format!(
                "{} orders indexed, {seen} queued",
                self.orders.len()
            ));
        }
        Ok(())
    }
}

/// The incoming order, in internal units.
struct Taker {
    id: u128,
    owner: u64,
    side: Side,
    /// Limit price in ticks; `None` for a market order.
    limit: Option<u64>,
    stp: SelfTradePrevention,
}

impl Taker {
    /// Whether a resting order at `price` (on the other side) is acceptable.
    #[inline]
    fn accepts(&self, price: u64) -> bool {
        match (self.limit, self.side) {
            (None, _) => true,
            (Some(limit), Side::Buy) => price <= limit,
            (Some(limit), Side::Sell) => price >= limit,
        }
    }

    /// Whether self-trade prevention applies against a resting order of `owner`.
    #[inline]
    fn prevents(&self, owner: u64) -> bool {
        owner == self.owner && self.stp != SelfTradePrevention::None
    }
}

enum TakeOutcome {
    /// Ran out of quantity or of acceptable liquidity.
    Done,
    /// Self-trade prevention cancelled the incoming order.
    SelfTradeStop,
}

impl Book {
    /// Whether an order on `side` at `price` ticks would trade on arrival.
    fn crosses(&self, side: Side, price: u64) -> bool {
        match side {
            Side::Buy => self.best(Side::Sell).is_some_and(|(ask, _)| ask <= price),
            Side::Sell => self.best(Side::Buy).is_some_and(|(bid, _)| bid >= price),
        }
    }

    /// Whether `taker` would fill `quantity` completely right now (for fill-or-kill),
    /// taking self-trade prevention into account.
    fn can_fill(&self, taker: &Taker, quantity: u64, orders: &Orders) -> bool {
        let mut available: u64 = 0;
        for l in self.level_indexes(taker.side.opposite()) {
            let level = &self.levels[l as usize];
            if !taker.accepts(level.price) {
                return false;
            }
            for e in &level.queue {
                let Some(o) = e.live(orders) else { continue };
                if taker.prevents(o.owner) {
                    if taker.stp == SelfTradePrevention::CancelIncoming {
                        return false;
                    }
                } else {
                    available = available.saturating_add(o.remaining);
                    if available >= quantity {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Matches `taker` for up to `quantity` lots against the other side, at the
    /// makers' prices in price-time priority. Returns the unfilled remainder.
    fn take(
        &mut self,
        taker: &Taker,
        mut remaining: u64,
        orders: &mut Orders,
        out: &mut Vec<Event>,
    ) -> (u64, TakeOutcome) {
        let maker_side = taker.side.opposite();
        while remaining > 0 {
            let Some((price, l)) = self.best(maker_side) else {
                break;
            };
            if !taker.accepts(price) {
                break;
            }
            let price_dec = self.tick.to_decimal(u128::from(price));
            let mut stop = false;
            let level = &mut self.levels[l as usize];
            while remaining > 0 {
                let Some(&entry) = level.queue.front() else {
                    break;
                };
                let Some(maker) = orders.get_mut(&entry.id()).filter(|o| o.seq == entry.seq) else {
                    // A stale entry of a cancelled order.
                    level.queue.pop_front();
                    continue;
                };
                if taker.prevents(maker.owner) {
                    if taker.stp == SelfTradePrevention::CancelIncoming {
                        stop = true;
                        break;
                    }
                    out.push(Event::Cancelled {
                        id: OrderId(entry.id()),
                        reason: CancelReason::SelfTrade,
                        remaining: self.lot.to_decimal(u128::from(maker.remaining)),
                    });
                    level.total -= u128::from(maker.remaining);
                } else {
                    let q = remaining.min(maker.remaining);
                    maker.remaining -= q;
                    maker.filled += q;
                    remaining -= q;
                    level.total -= u128::from(q);
                    out.push(Event::Trade {
                        market: self.spec.name.clone(),
                        maker: OrderId(entry.id()),
                        taker: OrderId(taker.id),
                        maker_owner: OwnerId(maker.owner),
                        taker_owner: OwnerId(taker.owner),
                        price: price_dec,
                        quantity: self.lot.to_decimal(u128::from(q)),
                        taker_side: taker.side,
                    });
                    if maker.remaining > 0 {
                        continue;
                    }
                    out.push(Event::Filled {
                        id: OrderId(entry.id()),
                    });
                }
                // The maker is finished: it leaves the queue, its level and the map.
                orders.remove(&entry.id());
                level.queue.pop_front();
                level.live -= 1;
                self.len -= 1;
            }
            if level.live == 0 {
                self.remove_level(maker_side, l);
            } else if level.queue.len() > 2 * level.live as usize + STALE_SLACK {
                let orders: &Orders = orders;
                level.queue.retain(|e| e.live(orders).is_some());
            }
            if stop {
                return (remaining, TakeOutcome::SelfTradeStop);
            }
        }
        (remaining, TakeOutcome::Done)
    }
}
