//! One market's book: price levels in ordered maps, orders in a slab with
//! intrusive FIFO lists per level, so that cancel is O(1) once the slot is known.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::types::{Depth, MarketSpec, OrderId, OwnerId, Side};
use crate::units::Unit;

/// "No slot" in the intrusive lists.
pub(crate) const NIL: u32 = u32::MAX;

/// A resting order inside the slab. 64 bytes.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) id: u128,
    pub(crate) owner: u64,
    pub(crate) price: u64,
    pub(crate) remaining: u64,
    pub(crate) filled: u64,
    pub(crate) prev: u32,
    pub(crate) next: u32,
    pub(crate) side: Side,
}

/// A price level: a FIFO list of slots and its aggregated quantity in lots.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    pub(crate) head: u32,
    pub(crate) tail: u32,
    pub(crate) count: u32,
    pub(crate) total: u128,
}

impl Level {
    const EMPTY: Level = Level {
        head: NIL,
        tail: NIL,
        count: 0,
        total: 0,
    };
}

/// A resting order as reported by [`Book::resting`] and stored in snapshots.
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

/// The book of one market: resting bids and asks in price-time priority.
///
/// Read it through [`crate::Exchange::market`]; it changes only through
/// [`crate::Exchange::execute`].
#[derive(Debug, Clone)]
pub struct Book {
    pub(crate) spec: MarketSpec,
    pub(crate) tick: Unit,
    pub(crate) lot: Unit,
    /// Bid levels by price in ticks; the best is the last.
    pub(crate) bids: BTreeMap<u64, Level>,
    /// Ask levels by price in ticks; the best is the first.
    pub(crate) asks: BTreeMap<u64, Level>,
    pub(crate) slots: Vec<Slot>,
    /// Head of the free list of slots (linked through `next`).
    pub(crate) free: u32,
    pub(crate) len: usize,
}

impl Book {
    pub(crate) fn new(spec: MarketSpec, tick: Unit, lot: Unit) -> Book {
        Book {
            spec,
            tick,
            lot,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            slots: Vec::new(),
            free: NIL,
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
        self.bids
            .keys()
            .next_back()
            .map(|&p| self.tick.to_decimal(u128::from(p)))
    }

    /// The lowest ask price.
    pub fn best_ask(&self) -> Option<Decimal> {
        self.asks
            .keys()
            .next()
            .map(|&p| self.tick.to_decimal(u128::from(p)))
    }

    /// Up to `levels` price levels per side, aggregated, best first.
    pub fn depth(&self, levels: usize) -> Depth {
        let level = |(&p, l): (&u64, &Level)| {
            (
                self.tick.to_decimal(u128::from(p)),
                self.lot.to_decimal(l.total),
            )
        };
        Depth {
            bids: self.bids.iter().rev().take(levels).map(level).collect(),
            asks: self.asks.iter().take(levels).map(level).collect(),
        }
    }

    /// All resting orders of one side in priority order (best price first, then FIFO).
    pub fn resting(&self, side: Side) -> Vec<RestingOrder> {
        let mut out = Vec::new();
        self.for_each_resting(side, |slot| {
            out.push(RestingOrder {
                id: OrderId(slot.id),
                owner: OwnerId(slot.owner),
                price: self.tick.to_decimal(u128::from(slot.price)),
                quantity: self.lot.to_decimal(u128::from(slot.remaining)),
                filled: self.lot.to_decimal(u128::from(slot.filled)),
            });
        });
        out
    }

    /// Calls `f` for every resting slot of `side` in priority order.
    pub(crate) fn for_each_resting(&self, side: Side, mut f: impl FnMut(&Slot)) {
        let mut visit = |level: &Level| {
            let mut s = level.head;
            while s != NIL {
                let slot = &self.slots[s as usize];
                f(slot);
                s = slot.next;
            }
        };
        match side {
            Side::Buy => self.bids.values().for_each(&mut visit),
            Side::Sell => self.asks.values().for_each(&mut visit),
        }
    }

    /// Appends a new order at the tail of its level; returns its slot.
    pub(crate) fn insert(
        &mut self,
        id: u128,
        owner: u64,
        side: Side,
        price: u64,
        remaining: u64,
        filled: u64,
    ) -> u32 {
        let levels = match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        let level = levels.entry(price).or_insert(Level::EMPTY);
        let slot = Slot {
            id,
            owner,
            price,
            remaining,
            filled,
            prev: level.tail,
            next: NIL,
            side,
        };
        let s = if self.free != NIL {
            let s = self.free;
            self.free = self.slots[s as usize].next;
            self.slots[s as usize] = slot;
            s
        } else {
            // The exchange caps the number of resting orders below u32::MAX.
            let s = self.slots.len() as u32;
            self.slots.push(slot);
            s
        };
        if level.tail == NIL {
            level.head = s;
        } else {
            self.slots[level.tail as usize].next = s;
        }
        level.tail = s;
        level.count += 1;
        level.total += u128::from(remaining);
        self.len += 1;
        s
    }

    /// Unlinks slot `s` from its level (removing the level if it empties) and frees it.
    pub(crate) fn remove(&mut self, s: u32) {
        let Slot {
            side,
            price,
            prev,
            next,
            remaining,
            ..
        } = self.slots[s as usize];
        let levels = match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        let now_empty = match levels.get_mut(&price) {
            Some(level) => {
                if prev == NIL {
                    level.head = next;
                } else {
                    self.slots[prev as usize].next = next;
                }
                if next == NIL {
                    level.tail = prev;
                } else {
                    self.slots[next as usize].prev = prev;
                }
                level.count -= 1;
                level.total -= u128::from(remaining);
                level.count == 0
            }
            None => false,
        };
        if now_empty {
            levels.remove(&price);
        }
        self.free_slot(s);
    }

    /// Puts slot `s` on the free list.
    #[inline]
    pub(crate) fn free_slot(&mut self, s: u32) {
        self.slots[s as usize].next = self.free;
        self.free = s;
        self.len -= 1;
    }
}
