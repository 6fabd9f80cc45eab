//! One market's book and the order store.
//!
//! - Orders live in a slab ([`Orders`]): a `Vec` of 56-byte slots with an
//!   intrusive free list, plus an id -> slot hash map with a fixed, seedable
//!   hasher. Each slot carries a generation that changes whenever the slot
//!   is freed.
//! - Price levels live in a slab of [`Level`]s, each with a FIFO queue of
//!   8-byte `(slot, generation)` entries. A cancel frees the slot and leaves a
//!   stale queue entry behind (its generation no longer matches), skipped by
//!   matching and compacted away once stale entries outnumber live ones; so a
//!   cancel is O(1) and checking an entry never hashes.
//! - Each side finds its levels through a [`Ladder`]: a dense window of
//!   price ticks -> level index with a bitset of non-empty ticks and a cached
//!   best tick, grown on demand up to [`MAX_SPAN`] ticks; levels priced
//!   outside the window go to an ordered map (`far`). Nothing iterates a hash
//!   map, so no result depends on a map's layout.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::types::{Depth, MarketSpec, OrderId, OwnerId, Side};
use crate::units::Unit;

/// A deterministic, fixed-key hasher for order ids: a folded multiply.
/// Results never depend on a map's iteration order, and the engine stays
/// free of randomness.
#[derive(Default, Clone, Copy)]
pub(crate) struct FoldHasher(u64);

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for FoldHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = fold_mul(i ^ 0x243f_6a88_85a3_08d3, self.0 ^ 0x9e37_79b9_7f4a_7c15);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        let lo = i as u64;
        let hi = (i >> 64) as u64;
        self.0 = fold_mul(
            lo ^ 0x243f_6a88_85a3_08d3,
            hi ^ 0x1319_8a2e_0370_7344 ^ self.0,
        );
    }
}

/// Builds [`FoldHasher`]s from a seed. The seed changes only the maps'
/// internal layout, never a result, so a node may pick a secret one to make
/// crafted colliding ids useless.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FoldState(pub(crate) u64);

impl BuildHasher for FoldState {
    type Hasher = FoldHasher;

    #[inline]
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(self.0)
    }
}

/// An order id as a map key: two `u64`s, so a map entry needs only 8-byte
/// alignment (24 bytes with its slot instead of 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdKey(u64, u64);

impl IdKey {
    #[inline]
    pub(crate) fn new(id: u128) -> IdKey {
        IdKey(id as u64, (id >> 64) as u64)
    }
}

impl Hash for IdKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from(self.0) | (u128::from(self.1) << 64));
    }
}

/// No slot / no level.
pub(crate) const NONE: u32 = u32::MAX;

// The memory per resting order documented in the crate docs relies on these.
const _: () = assert!(std::mem::size_of::<Order>() == 56);
const _: () = assert!(std::mem::size_of::<Entry>() == 8);
const _: () = assert!(std::mem::size_of::<(IdKey, u32)>() == 24);

/// A resting order in its slab slot (56 bytes); the price is its level's.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    id_lo: u64,
    id_hi: u64,
    pub(crate) owner: u64,
    /// Lots still resting; zero exactly when the slot is free.
    pub(crate) remaining: u64,
    pub(crate) filled: u64,
    /// The level index; in a free slot, the next free slot.
    pub(crate) level: u32,
    pub(crate) market: u32,
    /// Changes whenever the slot is freed: tells a live queue entry from a stale one.
    pub(crate) generation: u32,
    pub(crate) side: Side,
}

impl Order {
    /// The order id.
    #[inline]
    pub(crate) fn id(&self) -> u128 {
        u128::from(self.id_lo) | (u128::from(self.id_hi) << 64)
    }
}

/// All resting orders of an exchange: a slab and an id -> slot index.
#[derive(Debug, Clone)]
pub(crate) struct Orders {
    pub(crate) slab: Vec<Order>,
    /// Head of the free list threaded through `Order::level`.
    pub(crate) free: u32,
    pub(crate) index: HashMap<IdKey, u32, FoldState>,
}

impl Orders {
    pub(crate) fn new(hash: FoldState) -> Orders {
        Orders {
            slab: Vec::new(),
            free: NONE,
            index: HashMap::with_hasher(hash),
        }
    }

    /// The number of resting orders.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// The slot of a resting order.
    #[inline]
    pub(crate) fn slot(&self, id: u128) -> Option<u32> {
        self.index.get(&IdKey::new(id)).copied()
    }

    /// Whether an order with this id rests.
    #[inline]
    pub(crate) fn contains(&self, id: u128) -> bool {
        self.index.contains_key(&IdKey::new(id))
    }

    /// The order in a slot.
    #[inline]
    pub(crate) fn get(&self, slot: u32) -> &Order {
        &self.slab[slot as usize]
    }

    /// The order an entry stands for, if the entry is still live.
    #[inline]
    pub(crate) fn live(&self, e: Entry) -> Option<&Order> {
        let o = &self.slab[e.slot as usize];
        (o.generation == e.generation && o.remaining > 0).then_some(o)
    }

    /// Stores a new order (the caller checked that its id is not resting)
    /// and returns its queue entry.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        id: u128,
        owner: u64,
        remaining: u64,
        filled: u64,
        level: u32,
        market: u32,
        side: Side,
    ) -> Entry {
        let entry = Orders::store(
            &mut self.slab,
            &mut self.free,
            id,
            owner,
            remaining,
            filled,
            level,
            market,
            side,
        );
        self.index.insert(IdKey::new(id), entry.slot);
        entry
    }

    /// Puts an order into a free (or new) slot without indexing it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn store(
        slab: &mut Vec<Order>,
        free: &mut u32,
        id: u128,
        owner: u64,
        remaining: u64,
        filled: u64,
        level: u32,
        market: u32,
        side: Side,
    ) -> Entry {
        let slot = if *free != NONE {
            let slot = *free;
            let o = &mut slab[slot as usize];
            *free = o.level;
            o.id_lo = id as u64;
            o.id_hi = (id >> 64) as u64;
            o.owner = owner;
            o.remaining = remaining;
            o.filled = filled;
            o.level = level;
            o.market = market;
            o.side = side;
            slot
        } else {
            // At most one slot per resting order, and books are capped below u32::MAX.
            slab.push(Order {
                id_lo: id as u64,
                id_hi: (id >> 64) as u64,
                owner,
                remaining,
                filled,
                level,
                market,
                generation: 0,
                side,
            });
            (slab.len() - 1) as u32
        };
        Entry {
            slot,
            generation: slab[slot as usize].generation,
        }
    }

    /// Frees a slot whose id was already removed from the index.
    #[inline]
    pub(crate) fn free_slot(&mut self, slot: u32) {
        let o = &mut self.slab[slot as usize];
        o.remaining = 0;
        o.generation = o.generation.wrapping_add(1);
        // A slot whose generation would repeat is retired, never reused, so a
        // stale queue entry can never come back to life.
        if o.generation != u32::MAX {
            o.level = self.free;
            self.free = slot;
        }
    }

    /// Removes a resting order (by slot) from the index and frees its slot.
    #[inline]
    pub(crate) fn remove(&mut self, slot: u32) {
        let id = self.slab[slot as usize].id();
        self.index.remove(&IdKey::new(id));
        self.free_slot(slot);
    }
}

/// A place in a level's FIFO queue: 8 bytes. Cancelled orders leave their
/// entry behind (lazy deletion): it is live only while its slot holds the
/// same generation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// A price level: a FIFO queue and the aggregated quantity of its live orders.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    pub(crate) price: u64,
    pub(crate) queue: VecDeque<Entry>,
    /// Live orders in the queue (the rest of the queue is stale entries).
    pub(crate) live: u32,
    /// Remaining lots of the live orders.
    pub(crate) total: u128,
}

/// Stale entries a level may hold before it is compacted, beyond one per live order.
pub(crate) const STALE_SLACK: usize = 16;

/// The widest price window (in ticks) a side's ladder covers: 64k ticks,
/// about 260 KiB per side at most. Levels outside it go to the ordered map.
pub(crate) const MAX_SPAN: usize = 1 << 16;

/// The first window a ladder allocates (grown by doubling).
const INITIAL_SPAN: usize = 1 << 10;

/// A dense window of price ticks: tick `base + i` has level `slots[i]`
/// (`NONE` if empty), with a bitset of the non-empty ticks and the best one
/// cached. Bids want the highest tick, asks the lowest.
#[derive(Debug, Clone)]
pub(crate) struct Ladder {
    base: u64,
    slots: Vec<u32>,
    bits: Vec<u64>,
    count: usize,
    /// The best non-empty offset; meaningful only when `count > 0`.
    best: usize,
    high_is_best: bool,
}

impl Ladder {
    fn new(high_is_best: bool) -> Ladder {
        Ladder {
            base: 0,
            slots: Vec::new(),
            bits: Vec::new(),
            count: 0,
            best: 0,
            high_is_best,
        }
    }

    /// The offset of a price inside the window.
    #[inline]
    fn offset(&self, price: u64) -> Option<usize> {
        let off = price.wrapping_sub(self.base);
        (price >= self.base && off < self.slots.len() as u64).then_some(off as usize)
    }

    #[inline]
    fn get(&self, price: u64) -> Option<u32> {
        self.offset(price)
            .map(|i| self.slots[i])
            .filter(|&l| l != NONE)
    }

    #[inline]
    fn best(&self) -> Option<(u64, u32)> {
        (self.count > 0).then(|| (self.base + self.best as u64, self.slots[self.best]))
    }

    #[inline]
    fn better(&self, a: usize, b: usize) -> bool {
        if self.high_is_best { a > b } else { a < b }
    }

    /// Sets an empty offset to level `l`.
    #[inline]
    fn set(&mut self, i: usize, l: u32) {
        self.slots[i] = l;
        self.bits[i / 64] |= 1 << (i % 64);
        if self.count == 0 || self.better(i, self.best) {
            self.best = i;
        }
        self.count += 1;
    }

    /// Empties offset `i`.
    #[inline]
    fn clear(&mut self, i: usize) {
        self.slots[i] = NONE;
        self.bits[i / 64] &= !(1 << (i % 64));
        self.count -= 1;
        if self.count > 0 && i == self.best {
            self.best = if self.high_is_best {
                self.prev_set(i)
            } else {
                self.next_set(i)
            }
            .unwrap_or(0);
        }
    }

    /// The lowest set offset at or above `i`.
    fn next_set(&self, i: usize) -> Option<usize> {
        let mut w = i / 64;
        if w >= self.bits.len() {
            return None;
        }
        let mut word = self.bits[w] & (!0u64 << (i % 64));
        loop {
            if word != 0 {
                return Some(w * 64 + word.trailing_zeros() as usize);
            }
            w += 1;
            if w >= self.bits.len() {
                return None;
            }
            word = self.bits[w];
        }
    }

    /// The highest set offset at or below `i`.
    fn prev_set(&self, i: usize) -> Option<usize> {
        if self.bits.is_empty() {
            return None;
        }
        let mut w = (i / 64).min(self.bits.len() - 1);
        let shift = if i / 64 > w { 0 } else { 63 - i % 64 };
        let mut word = self.bits[w] & (!0u64 >> shift);
        loop {
            if word != 0 {
                return Some(w * 64 + 63 - word.leading_zeros() as usize);
            }
            if w == 0 {
                return None;
            }
            w -= 1;
            word = self.bits[w];
        }
    }

    /// Re-windows the ladder to `[base, base + span)` (span a multiple of 64),
    /// keeping the levels that fit; returns the ones that do not.
    fn rewindow(&mut self, base: u64, span: usize) -> Vec<(u64, u32)> {
        let old: Vec<(u64, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l != NONE)
            .map(|(i, &l)| (self.base + i as u64, l))
            .collect();
        self.base = base;
        self.slots.clear();
        self.slots.resize(span, NONE);
        self.bits.clear();
        self.bits.resize(span / 64, 0);
        self.count = 0;
        let mut out = Vec::new();
        for (price, l) in old {
            match self.offset(price) {
                Some(i) => self.set(i, l),
                None => out.push((price, l)),
            }
        }
        out
    }
}

/// The price levels of one side: the ladder and, for prices outside its
/// window, an ordered map.
#[derive(Debug, Clone)]
pub(crate) struct Levels {
    pub(crate) ladder: Ladder,
    pub(crate) far: BTreeMap<u64, u32>,
}

impl Levels {
    fn new(side: Side) -> Levels {
        Levels {
            ladder: Ladder::new(side == Side::Buy),
            far: BTreeMap::new(),
        }
    }

    /// The number of levels.
    pub(crate) fn len(&self) -> usize {
        self.ladder.count + self.far.len()
    }

    /// The level at an exact price.
    #[inline]
    pub(crate) fn get(&self, price: u64) -> Option<u32> {
        match self.ladder.get(price) {
            Some(l) => Some(l),
            None if self.far.is_empty() => None,
            None => self.far.get(&price).copied(),
        }
    }

    /// The best level: `(price in ticks, level index)`.
    #[inline]
    pub(crate) fn best(&self) -> Option<(u64, u32)> {
        let near = self.ladder.best();
        if self.far.is_empty() {
            return near;
        }
        let far = if self.ladder.high_is_best {
            self.far.last_key_value()
        } else {
            self.far.first_key_value()
        }
        .map(|(&p, &l)| (p, l));
        match (near, far) {
            (Some(n), Some(f)) => Some(
                if (self.ladder.high_is_best && f.0 > n.0)
                    || (!self.ladder.high_is_best && f.0 < n.0)
                {
                    f
                } else {
                    n
                },
            ),
            (n, f) => n.or(f),
        }
    }

    /// Adds a level at a price that has none.
    fn add(&mut self, price: u64, l: u32) {
        if let Some(i) = self.ladder.offset(price) {
            return self.ladder.set(i, l);
        }
        let lad = &self.ladder;
        let (lo, hi) = if lad.count == 0 {
            // Empty: center a fresh window on the price.
            let span = lad.slots.len().max(INITIAL_SPAN) as u64;
            let lo = price.saturating_sub(span / 2);
            (lo, lo + span)
        } else {
            let (lo, hi) = (
                lad.base.min(price),
                (lad.base + lad.slots.len() as u64).max(price + 1),
            );
            if hi - lo > MAX_SPAN as u64 {
                self.far.insert(price, l);
                return;
            }
            // Grow by at least doubling, toward the new price.
            let span = ((hi - lo) as usize)
                .max(2 * lad.slots.len())
                .clamp(INITIAL_SPAN, MAX_SPAN)
                .next_multiple_of(64) as u64;
            if price < lad.base {
                let lo = hi.saturating_sub(span);
                (lo, lo + span)
            } else {
                (lo, lo + span)
            }
        };
        let evicted = self.ladder.rewindow(lo, (hi - lo) as usize);
        self.far.extend(evicted);
        // Levels of the far map that now fit move into the window.
        let fit: Vec<(u64, u32)> = self.far.range(lo..hi).map(|(&p, &l)| (p, l)).collect();
        for (p, l) in fit {
            self.far.remove(&p);
            let i = self.ladder.offset(p).unwrap_or(0);
            self.ladder.set(i, l);
        }
        match self.ladder.offset(price) {
            Some(i) => self.ladder.set(i, l),
            None => {
                self.far.insert(price, l);
            }
        }
    }

    /// Removes the level at a price.
    #[inline]
    fn remove(&mut self, price: u64) {
        match self.ladder.offset(price) {
            Some(i) if self.ladder.slots[i] != NONE => self.ladder.clear(i),
            _ => {
                self.far.remove(&price);
            }
        }
    }

    /// The levels in priority order (best first).
    pub(crate) fn iter(&self) -> LevelIter<'_> {
        let lad = &self.ladder;
        let far: Box<dyn Iterator<Item = (u64, u32)> + '_> = if lad.high_is_best {
            Box::new(self.far.iter().rev().map(|(&p, &l)| (p, l)))
        } else {
            Box::new(self.far.iter().map(|(&p, &l)| (p, l)))
        };
        LevelIter {
            levels: self,
            next: lad.best().map(|_| lad.best),
            far: far.peekable(),
        }
    }
}

/// Walks a side's levels best first, merging the ladder with the far map.
pub(crate) struct LevelIter<'a> {
    levels: &'a Levels,
    /// The next ladder offset to yield.
    next: Option<usize>,
    far: std::iter::Peekable<Box<dyn Iterator<Item = (u64, u32)> + 'a>>,
}

impl Iterator for LevelIter<'_> {
    type Item = (u64, u32);

    fn next(&mut self) -> Option<(u64, u32)> {
        let lad = &self.levels.ladder;
        let near = self.next.map(|i| (lad.base + i as u64, lad.slots[i]));
        let take_far = match (near, self.far.peek()) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((n, _)), Some(&(f, _))) => {
                if lad.high_is_best {
                    f > n
                } else {
                    f < n
                }
            }
        };
        if take_far {
            return self.far.next();
        }
        let i = self.next?;
        self.next = if lad.high_is_best {
            i.checked_sub(1).and_then(|j| lad.prev_set(j))
        } else {
            lad.next_set(i + 1)
        };
        near
    }
}

/// A resting order as reported by [`crate::Exchange::resting`] and stored in snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestingOrder {
    /// The order.
    pub id: OrderId,
    /// Its owner.
    pub owner: OwnerId,
    /// Its limit price.
    pub price: Decimal,
    /// The quantity still resting.
    pub quantity: Decimal,
    /// The quantity already filled.
    pub filled: Decimal,
}

/// The book of one market: its price levels, best first, with FIFO queues.
///
/// Read it through [`crate::Exchange::market`]; it changes only through
/// [`crate::Exchange::execute`]. The orders themselves live in the exchange
/// (see [`crate::Exchange::resting`] and [`crate::Exchange::order`]).
#[derive(Debug, Clone)]
pub struct Book {
    pub(crate) spec: MarketSpec,
    pub(crate) tick: Unit,
    pub(crate) lot: Unit,
    pub(crate) bids: Levels,
    pub(crate) asks: Levels,
    /// Level slab; `free_levels` lists the unused ones.
    pub(crate) levels: Vec<Level>,
    pub(crate) free_levels: Vec<u32>,
    pub(crate) len: usize,
}

impl Book {
    pub(crate) fn new(spec: MarketSpec, tick: Unit, lot: Unit) -> Book {
        Book {
            spec,
            tick,
            lot,
            bids: Levels::new(Side::Buy),
            asks: Levels::new(Side::Sell),
            levels: Vec::new(),
            free_levels: Vec::new(),
            len: 0,
        }
    }

    /// The market this book belongs to.
    pub fn spec(&self) -> &MarketSpec {
        &self.spec
    }

    /// The market's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The number of resting orders (both sides).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no order rests on this book.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The highest bid price.
    pub fn best_bid(&self) -> Option<Decimal> {
        self.best(Side::Buy)
            .map(|(p, _)| self.tick.to_decimal(u128::from(p)))
    }

    /// The lowest ask price.
    pub fn best_ask(&self) -> Option<Decimal> {
        self.best(Side::Sell)
            .map(|(p, _)| self.tick.to_decimal(u128::from(p)))
    }

    /// Up to `levels` price levels per side, aggregated, best first.
    pub fn depth(&self, levels: usize) -> Depth {
        let level = |(p, l): (u64, u32)| {
            (
                self.tick.to_decimal(u128::from(p)),
                self.lot.to_decimal(self.levels[l as usize].total),
            )
        };
        Depth {
            bids: self.bids.iter().take(levels).map(level).collect(),
            asks: self.asks.iter().take(levels).map(level).collect(),
        }
    }

    /// The levels of a side.
    #[inline]
    pub(crate) fn side(&self, side: Side) -> &Levels {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    /// The price in ticks of a resting order.
    #[inline]
    pub(crate) fn price_of(&self, order: &Order) -> u64 {
        self.levels[order.level as usize].price
    }

    /// The best level of a side: `(price in ticks, level index)`.
    #[inline]
    pub(crate) fn best(&self, side: Side) -> Option<(u64, u32)> {
        self.side(side).best()
    }

    /// Calls `f` for every live order of `side` in priority order.
    pub(crate) fn for_each_resting(&self, side: Side, orders: &Orders, mut f: impl FnMut(&Order)) {
        for (_, l) in self.side(side).iter() {
            for &e in &self.levels[l as usize].queue {
                if let Some(o) = orders.live(e) {
                    f(o);
                }
            }
        }
    }

    /// Queues a new order at the tail of its level and adds it to `orders`
    /// (the caller checked that its id is not resting).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &mut self,
        orders: &mut Orders,
        market: u32,
        id: u128,
        owner: u64,
        side: Side,
        price: u64,
        remaining: u64,
        filled: u64,
    ) {
        self.insert_with(side, price, remaining, |l| {
            orders.add(id, owner, remaining, filled, l, market, side)
        });
    }

    /// Queues an order at the tail of the level at `price` of `side` (made if
    /// missing); `store` stores it given its level and returns its entry.
    #[inline]
    pub(crate) fn insert_with(
        &mut self,
        side: Side,
        price: u64,
        remaining: u64,
        store: impl FnOnce(u32) -> Entry,
    ) {
        let sides = match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        let l = match sides.get(price) {
            Some(l) => l,
            None => {
                let l = match self.free_levels.pop() {
                    Some(l) => {
                        let level = &mut self.levels[l as usize];
                        level.price = price;
                        level.live = 0;
                        level.total = 0;
                        l
                    }
                    None => {
                        // At most one level per resting order, so this fits in u32.
                        self.levels.push(Level {
                            price,
                            queue: VecDeque::new(),
                            live: 0,
                            total: 0,
                        });
                        (self.levels.len() - 1) as u32
                    }
                };
                sides.add(price, l);
                l
            }
        };
        let entry = store(l);
        let level = &mut self.levels[l as usize];
        level.queue.push_back(entry);
        level.live += 1;
        level.total += u128::from(remaining);
        self.len += 1;
    }

    /// Takes the order in `slot` off its level (its id was just removed from
    /// the index; the slot is freed here): its queue entry turns stale; the
    /// level goes when nothing live is left, and is compacted when stale
    /// entries outnumber live ones. Returns its remaining lots.
    pub(crate) fn unrest(&mut self, slot: u32, orders: &mut Orders) -> u64 {
        let order = orders.get(slot);
        let (l, side, remaining) = (order.level, order.side, order.remaining);
        orders.free_slot(slot);
        let level = &mut self.levels[l as usize];
        level.live -= 1;
        level.total -= u128::from(remaining);
        self.len -= 1;
        if level.live == 0 {
            self.remove_level(side, l);
        } else {
            let live = level.live as usize;
            if level.queue.len() > 2 * live + STALE_SLACK {
                level.queue.retain(|&e| orders.live(e).is_some());
                if level.queue.capacity() > 4 * level.queue.len() + 64 {
                    level.queue.shrink_to(2 * level.queue.len());
                }
            }
        }
        remaining
    }

    /// Removes level `l` of `side`, which holds no live order.
    #[inline]
    pub(crate) fn remove_level(&mut self, side: Side, l: u32) {
        let level = &mut self.levels[l as usize];
        let price = level.price;
        level.queue.clear();
        if level.queue.capacity() > 256 {
            level.queue = VecDeque::new();
        }
        match side {
            Side::Buy => self.bids.remove(price),
            Side::Sell => self.asks.remove(price),
        }
        self.free_levels.push(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random adds and removes over narrow, wide and huge price ranges: the
    /// ladder plus far map must always agree with an ordered map.
    #[test]
    fn levels_agree_with_an_ordered_map() {
        for (side, seed) in [
            (Side::Buy, 1u64),
            (Side::Sell, 2),
            (Side::Buy, 3),
            (Side::Sell, 4),
        ] {
            let mut levels = Levels::new(side);
            let mut model: BTreeMap<u64, u32> = BTreeMap::new();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
            let mut rand = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            for step in 0..20_000u32 {
                let r = rand();
                // Mostly near 1e6, sometimes far away, sometimes near the bottom.
                let price = match r % 10 {
                    0 => 1 + (r >> 8) % 100,
                    1 => 1_000_000 + (r >> 8) % 500_000,
                    2 => crate::units::MAX_UNITS - (r >> 8) % 1000,
                    _ => 1_000_000 + (r >> 8) % 3000,
                };
                if (r >> 40) % 3 == 0 && !model.is_empty() {
                    // Remove the best level sometimes, a random one otherwise.
                    let p = if r & 1 == 0 {
                        let best = match side {
                            Side::Buy => model.last_key_value(),
                            Side::Sell => model.first_key_value(),
                        };
                        best.map(|(&p, _)| p).unwrap_or(price)
                    } else {
                        model
                            .range(price..)
                            .next()
                            .map(|(&p, _)| p)
                            .unwrap_or(price)
                    };
                    if model.remove(&p).is_some() {
                        levels.remove(p);
                    }
                } else if let std::collections::btree_map::Entry::Vacant(v) = model.entry(price) {
                    v.insert(step);
                    levels.add(price, step);
                }
                let best = match side {
                    Side::Buy => model.last_key_value(),
                    Side::Sell => model.first_key_value(),
                }
                .map(|(&p, &l)| (p, l));
                assert_eq!(levels.best(), best, "step {step}");
                assert_eq!(levels.len(), model.len(), "step {step}");
                assert_eq!(levels.get(price), model.get(&price).copied(), "step {step}");
                if step % 500 == 0 {
                    let ordered: Vec<(u64, u32)> = match side {
                        Side::Buy => model.iter().rev().map(|(&p, &l)| (p, l)).collect(),
                        Side::Sell => model.iter().map(|(&p, &l)| (p, l)).collect(),
                    };
                    assert_eq!(levels.iter().collect::<Vec<_>>(), ordered, "step {step}");
                }
            }
            assert!(levels.ladder.slots.len() <= MAX_SPAN);
        }
    }
}
