//! One market's book: price levels in an ordered map (plus a hash map for
//! O(1) lookup by price), each with a FIFO queue of order ids. Cancels leave
//! stale entries behind that are skipped and compacted away, so a cancel is
//! O(1) and touches only the order's map entry and its level.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::types::{Depth, MarketSpec, OrderId, OwnerId, Side};
use crate::units::Unit;

/// A deterministic, fixed-key hasher for order ids and prices: a folded
/// multiply. Results never depend on a map's iteration order, and the engine
/// stays free of randomness.
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

/// A hash map with the deterministic [`FoldHasher`].
pub(crate) type FoldMap<K, V> = HashMap<K, V, FoldState>;

/// A resting order, stored inline in the exchange's id map (so a cancel
/// touches one map entry and its level, nothing else). 48 bytes, so a map
/// entry with its id is 64; the price is its level's.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub(crate) owner: u64,
    pub(crate) remaining: u64,
    pub(crate) filled: u64,
    /// When it was queued: tells a live queue entry from a stale one.
    pub(crate) seq: u64,
    pub(crate) market: u32,
    pub(crate) level: u32,
    pub(crate) side: Side,
}

/// All resting orders of an exchange by id.
pub(crate) type Orders = FoldMap<u128, Order>;

/// A place in a level's FIFO queue. Cancelled orders leave their entry behind
/// (lazy deletion): an entry is live only while the id map holds an order
/// with this id *and* this `seq`.
/// 24 bytes: the id is split so the entry needs only 8-byte alignment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    id_lo: u64,
    id_hi: u64,
    pub(crate) seq: u64,
}

impl Entry {
    #[inline]
    pub(crate) fn new(id: u128, seq: u64) -> Entry {
        Entry {
            id_lo: id as u64,
            id_hi: (id >> 64) as u64,
            seq,
        }
    }

    /// The order id.
    #[inline]
    pub(crate) fn id(&self) -> u128 {
        u128::from(self.id_lo) | (u128::from(self.id_hi) << 64)
    }

    /// The order this entry stands for, if the entry is still live.
    #[inline]
    pub(crate) fn live<'a>(&self, orders: &'a Orders) -> Option<&'a Order> {
        orders.get(&self.id()).filter(|o| o.seq == self.seq)
    }
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

/// The price levels of one side: ordered by price for best-price walks, and
/// hashed by price so that adding to an existing level costs no tree search.
#[derive(Debug, Clone)]
pub(crate) struct Levels {
    /// Price in ticks -> level index; the best bid is the last, the best ask the first.
    pub(crate) order: BTreeMap<u64, u32>,
    /// The same mapping, for O(1) lookup.
    pub(crate) lookup: FoldMap<u64, u32>,
}

impl Levels {
    fn new(hash: FoldState) -> Levels {
        Levels {
            order: BTreeMap::new(),
            lookup: HashMap::with_hasher(hash),
        }
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
    pub(crate) fn new(spec: MarketSpec, tick: Unit, lot: Unit, hash: FoldState) -> Book {
        Book {
            spec,
            tick,
            lot,
            bids: Levels::new(hash),
            asks: Levels::new(hash),
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
        let level = |(&p, &l): (&u64, &u32)| {
            (
                self.tick.to_decimal(u128::from(p)),
                self.lot.to_decimal(self.levels[l as usize].total),
            )
        };
        Depth {
            bids: self
                .bids
                .order
                .iter()
                .rev()
                .take(levels)
                .map(level)
                .collect(),
            asks: self.asks.order.iter().take(levels).map(level).collect(),
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
        match side {
            Side::Buy => self.bids.order.last_key_value(),
            Side::Sell => self.asks.order.first_key_value(),
        }
        .map(|(&p, &l)| (p, l))
    }

    /// The level indexes of a side, best first.
    pub(crate) fn level_indexes(&self, side: Side) -> Box<dyn Iterator<Item = u32> + '_> {
        match side {
            Side::Buy => Box::new(self.bids.order.values().rev().copied()),
            Side::Sell => Box::new(self.asks.order.values().copied()),
        }
    }

    /// Calls `f` for every live order of `side` in priority order.
    pub(crate) fn for_each_resting(
        &self,
        side: Side,
        orders: &Orders,
        mut f: impl FnMut(u128, &Order),
    ) {
        for l in self.level_indexes(side) {
            for e in &self.levels[l as usize].queue {
                if let Some(o) = e.live(orders) {
                    f(e.id(), o);
                }
            }
        }
    }

    /// Queues a new order at the tail of its level and adds it to `orders`.
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
        seq: u64,
    ) {
        let sides = match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        let l = match sides.lookup.get(&price) {
            Some(&l) => l,
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
                sides.lookup.insert(price, l);
                sides.order.insert(price, l);
                l
            }
        };
        let level = &mut self.levels[l as usize];
        level.queue.push_back(Entry::new(id, seq));
        level.live += 1;
        level.total += u128::from(remaining);
        self.len += 1;
        orders.insert(
            id,
            Order {
                owner,
                remaining,
                filled,
                seq,
                market,
                level: l,
                side,
            },
        );
    }

    /// Accounts for an order that was just removed from `orders` (cancelled):
    /// its queue entry turns stale; the level goes when nothing live is left,
    /// and is compacted when stale entries outnumber live ones.
    pub(crate) fn unrest(&mut self, order: &Order, orders: &Orders) {
        let l = order.level;
        let level = &mut self.levels[l as usize];
        level.live -= 1;
        level.total -= u128::from(order.remaining);
        self.len -= 1;
        if level.live == 0 {
            self.remove_level(order.side, l);
        } else {
            let live = level.live as usize;
            if level.queue.len() > 2 * live + STALE_SLACK {
                level.queue.retain(|e| e.live(orders).is_some());
                if level.queue.capacity() > 4 * level.queue.len() + 64 {
                    level.queue.shrink_to(2 * level.queue.len());
                }
            }
        }
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
        let sides = match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        sides.order.remove(&price);
        sides.lookup.remove(&price);
        self.free_levels.push(l);
    }
}
