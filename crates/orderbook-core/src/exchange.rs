//! The exchange: all markets, the global order index and the matching algorithm.

use std::collections::hash_map::Entry;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::book::{Book, FoldState, IdKey, Orders, RestingOrder, STALE_SLACK};
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
    /// Every resting order: a slab and an id index.
    orders: Orders,
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
        let mut exchange = Exchange {
            books: Vec::new(),
            by_name: Vec::new(),
            orders: Orders::new(FoldState(seed)),
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
        self.books.push(Book::new(spec, tick, lot));
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
        book.for_each_resting(side, &self.orders, |o| {
            out.push(RestingOrder {
                id: OrderId(o.id()),
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
        let slot = self.orders.get(self.orders.slot(id.0)?);
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
        let index = &mut self.orders.index;
        let capacity = index.capacity();
        if capacity > 1024 && index.len() < capacity / 4 {
            index.shrink_to(capacity / 2);
        }
        // Slots cannot move while queues point at them, so after mass cancels
        // or fills the whole state is rebuilt (amortized O(1): only once three
        // quarters of the slots are free). Depends only on the state, so every
        // node does it at the same command.
        let slots = self.orders.slab.len();
        if slots > 1024 && self.orders.len() < slots / 4 {
            self.compact();
        }
    }

    #[inline]
    /// Rebuilds the state from its snapshot: the same orders, queues and
    /// digest in memory sized for the orders resting now.
    #[cold]
    fn compact(&mut self) {
        let seed = self.orders.index.hasher().0;
        // Restoring a snapshot of a valid state cannot fail; if it ever did,
        // the current (larger) state simply stays.
        if let Ok(fresh) = Exchange::restore_with_hash_seed(self.snapshot(), seed) {
            *self = fresh;
        }
    }

    fn market_index(&self, name: &str) -> Option<usize> {
        if self.by_name.len() <= 4 {
            return self
                .by_name
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|&(_, i)| i as usize);
        }
        self.by_name
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|pos| self.by_name[pos].1 as usize)
    }

    fn cancel(&mut self, id: OrderId, owner: OwnerId, out: &mut Vec<Event>) {
        let key = IdKey::new(id.0);
        // One probe: remove first, put back in the rare case of a foreign cancel.
        let Some(slot) = self.orders.index.remove(&key) else {
            return out.push(Event::Rejected {
                id,
                reason: RejectReason::UnknownOrder,
            });
        };
        let order = self.orders.get(slot);
        if order.owner != owner.0 {
            self.orders.index.insert(key, slot);
            return out.push(Event::Rejected {
                id,
                reason: RejectReason::NotOwner,
            });
        }
        let book = &mut self.books[order.market as usize];
        let remaining = book.unrest(slot, &mut self.orders);
        let remaining = book.lot.to_decimal(u128::from(remaining));
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
        if let Some(price) = limit
            && matches!(
                order.time_in_force,
                TimeInForce::Gtc | TimeInForce::PostOnly
            )
            && !book.crosses(order.side, price)
        {
            // The common case: a limit that rests without trading. One probe
            // of the id index both rejects a duplicate and indexes the order.
            let Orders { slab, free, index } = &mut self.orders;
            let Entry::Vacant(vacant) = index.entry(IdKey::new(id.0)) else {
                return reject(out, RejectReason::DuplicateOrderId);
            };
            if book.len >= MAX_ORDERS_PER_BOOK {
                return reject(out, RejectReason::BookFull);
            }
            out.push(Event::Accepted { id });
            let mut slot = 0;
            book.insert_with(order.side, price, quantity, |level| {
                let entry = Orders::store(
                    slab,
                    free,
                    id.0,
                    order.owner.0,
                    quantity,
                    0,
                    level,
                    market as u32,
                    order.side,
                );
                slot = entry.slot;
                entry
            });
            vacant.insert(slot);
            return out.push(Event::Rested {
                id,
                price: book.tick.to_decimal(u128::from(price)),
                quantity: book.lot.to_decimal(u128::from(quantity)),
            });
        }
        if self.orders.contains(id.0) {
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
        // The incoming order's market name (equal to the book's) becomes the
        // first trade's, which saves an allocation.
        let mut name = Some(order.market);
        let (remaining, outcome) = match limit {
            // A limit that does not cross never looks at the other side.
            Some(p) if !book.crosses(order.side, p) => (quantity, TakeOutcome::Done),
            _ => book.take(&taker, quantity, &mut self.orders, &mut name, out),
        };
        match outcome {
            TakeOutcome::SelfTradeStop => out.push(Event::Cancelled {
                id,
                reason: CancelReason::SelfTrade,
                remaining: book.lot.to_decimal(u128::from(remaining)),
            }),
            TakeOutcome::Done if remaining == 0 => out.push(Event::Filled { id }),
            TakeOutcome::Done => match (limit, order.time_in_force) {
                (Some(price), TimeInForce::Gtc | TimeInForce::PostOnly) => {
                    book.insert(
                        &mut self.orders,
                        market as u32,
                        id.0,
                        order.owner.0,
                        order.side,
                        price,
                        remaining,
                        quantity - remaining,
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
                    if exchange.orders.contains(o.id.0) {
                        return bad(format!("duplicate order id {}", o.id));
                    }
                    if book.len >= MAX_ORDERS_PER_BOOK {
                        return bad(format!("too many orders in {name}"));
                    }
                    book.insert(
                        &mut exchange.orders,
                        m as u32,
                        o.id.0,
                        o.owner.0,
                        side,
                        price,
                        remaining,
                        filled,
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
            for (side, levels) in [(0u8, book.bids.len()), (1u8, book.asks.len())] {
                h.update([side]);
                h.update((levels as u64).to_le_bytes());
                let side = if side == 0 { Side::Buy } else { Side::Sell };
                let mut buf = [0u8; 48];
                book.for_each_resting(side, &self.orders, |slot| {
                    buf[0..16].copy_from_slice(&slot.id().to_le_bytes());
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
            for side in [Side::Buy, Side::Sell] {
                let levels = book.side(side);
                let mut last: Option<u64> = None;
                let mut n_levels = 0usize;
                for (price, l) in levels.iter() {
                    n_levels += 1;
                    if let Some(last) = last {
                        let ordered = match side {
                            Side::Buy => price < last,
                            Side::Sell => price > last,
                        };
                        if !ordered {
                            return fail(format!("{name}: levels out of order at {price}"));
                        }
                    }
                    last = Some(price);
                    let Some(level) = book.levels.get(l as usize) else {
                        return fail(format!("{name}: dangling level {l}"));
                    };
                    if levels.get(price) != Some(l) || level.price != price {
                        return fail(format!("{name}: level {price} is not where its maps say"));
                    }
                    let (mut n, mut total) = (0u32, 0u128);
                    for &e in &level.queue {
                        let Some(o) = self.orders.live(e) else {
                            continue;
                        };
                        if book.price_of(o) != price
                            || o.side != side
                            || o.level != l
                            || o.market as usize != m
                        {
                            return fail(format!(
                                "{name}: order {} is queued in the wrong level",
                                o.id()
                            ));
                        }
                        if self.orders.slot(o.id()) != Some(e.slot) {
                            return fail(format!(
                                "{name}: order {} is not indexed at its slot",
                                o.id()
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
                if n_levels != levels.len() {
                    return fail(format!("{name}: level count is off"));
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
        let occupied = self.orders.slab.iter().filter(|o| o.remaining > 0).count();
        if seen != self.orders.len() || occupied != seen {
            return fail(format!(
                "{} orders indexed, {occupied} stored, {seen} queued",
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
    #[inline]
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
        for (price, l) in self.side(taker.side.opposite()).iter() {
            if !taker.accepts(price) {
                return false;
            }
            for &e in &self.levels[l as usize].queue {
                let Some(o) = orders.live(e) else { continue };
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
        name: &mut Option<String>,
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
                let maker = &mut orders.slab[entry.slot as usize];
                if maker.generation != entry.generation || maker.remaining == 0 {
                    // A stale entry of a cancelled order.
                    level.queue.pop_front();
                    continue;
                }
                let maker_id = OrderId(maker.id());
                if taker.prevents(maker.owner) {
                    if taker.stp == SelfTradePrevention::CancelIncoming {
                        stop = true;
                        break;
                    }
                    out.push(Event::Cancelled {
                        id: maker_id,
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
                        market: name.take().unwrap_or_else(|| self.spec.name.clone()),
                        maker: maker_id,
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
                    out.push(Event::Filled { id: maker_id });
                }
                // The maker is finished: it leaves the queue, its level and the store.
                orders.remove(entry.slot);
                level.queue.pop_front();
                level.live -= 1;
                self.len -= 1;
            }
            if level.live == 0 {
                self.remove_level(maker_side, l);
            } else if level.queue.len() > 2 * level.live as usize + STALE_SLACK {
                let orders: &Orders = orders;
                level.queue.retain(|&e| orders.live(e).is_some());
            }
            if stop {
                return (remaining, TakeOutcome::SelfTradeStop);
            }
        }
        (remaining, TakeOutcome::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn place(id: u128, side: Side, ticks: i64) -> Command {
        Command::Place(NewOrder {
            id: OrderId(id),
            owner: OwnerId(1),
            market: "M".into(),
            side,
            order_type: OrderType::Limit,
            price: Some(Decimal::new(ticks, 2)),
            quantity: Decimal::ONE,
            time_in_force: TimeInForce::Gtc,
            stp: SelfTradePrevention::None,
        })
    }

    #[test]
    fn mass_cancels_give_memory_back_and_keep_the_book() {
        let spec = MarketSpec::new("M", Decimal::new(1, 2), Decimal::ONE);
        let mut ex = Exchange::with_hash_seed(vec![spec], 7).expect("market");
        for id in 0..8000u128 {
            let side = if id % 2 == 0 { Side::Buy } else { Side::Sell };
            let ticks = if side == Side::Buy {
                1000 - (id % 50) as i64
            } else {
                2000 + (id % 50) as i64
            };
            ex.execute(place(id, side, ticks));
        }
        assert_eq!(ex.orders.slab.len(), 8000);
        for id in (0..8000u128).filter(|id| id % 10 != 0) {
            let before = ex.resting("M", Side::Buy).expect("market");
            let events = ex.execute(Command::Cancel {
                id: OrderId(id),
                owner: OwnerId(1),
            });
            assert!(
                matches!(events[..], [Event::Cancelled { .. }]),
                "{events:?}"
            );
            // Only the cancelled order left, whether or not the state was rebuilt.
            let mut expected = before;
            expected.retain(|o| o.id.0 != id);
            assert_eq!(ex.resting("M", Side::Buy).expect("market"), expected);
            if id % 97 == 0 {
                ex.check_invariants().expect("invariants");
            }
        }
        assert_eq!(ex.resting_orders(), 800);
        assert!(
            ex.orders.slab.len() < 3200,
            "slab kept {} slots",
            ex.orders.slab.len()
        );
        ex.check_invariants().expect("invariants");
        // The rebuilt state is the state: same digest as a fresh restore, and
        // the survivors still trade in time order.
        let copy = Exchange::restore(ex.snapshot()).expect("restore");
        assert_eq!(copy.digest(), ex.digest());
        let taker = Command::Place(NewOrder {
            id: OrderId(99_999),
            owner: OwnerId(2),
            market: "M".into(),
            side: Side::Sell,
            order_type: OrderType::Market,
            price: None,
            quantity: Decimal::TWO,
            time_in_force: TimeInForce::Ioc,
            stp: SelfTradePrevention::None,
        });
        let makers: Vec<u128> = ex
            .execute(taker)
            .iter()
            .filter_map(|e| match e {
                Event::Trade { maker, .. } => Some(maker.0),
                _ => None,
            })
            .collect();
        // Best bid is 10.00 (ids with id % 50 == 0), oldest first: 0 and 50.
        assert_eq!(makers, vec![0, 50]);
    }
}
