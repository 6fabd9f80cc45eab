//! Order ids, owners and the market hash: how replicated events map onto
//! `orderbook-core` identifiers.

use std::fmt;
use std::str::FromStr;

use orderbook_core::{MarketSpec, OrderId, OwnerId};
use peer_protocol::NodeId;
use sha2::{Digest as _, Sha256};

/// The first 8 bytes of a node id, big-endian: the node's [`OwnerId`] and the
/// high half of the ids of the orders it places.
pub fn node_prefix(node: &NodeId) -> u64 {
    let bytes = node.as_bytes();
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(prefix)
}

/// The owner of every order a node places (one owner per node).
pub fn owner_of(node: &NodeId) -> OwnerId {
    OwnerId(node_prefix(node))
}

/// The id of the order placed by event `(origin, seq)`: `prefix(origin) << 64 | seq`.
pub fn order_id(origin: &NodeId, seq: u64) -> OrderId {
    OrderId((u128::from(node_prefix(origin)) << 64) | u128::from(seq))
}

/// The API form of an order id: `<16 hex digits of the origin prefix>-<seq>`,
/// e.g. `1a2b3c4d5e6f7081-42`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiOrderId(pub OrderId);

impl ApiOrderId {
    /// The origin prefix (the high 64 bits).
    pub fn prefix(&self) -> u64 {
        (self.0.0 >> 64) as u64
    }

    /// The `seq` of the placing event (the low 64 bits).
    pub fn seq(&self) -> u64 {
        self.0.0 as u64
    }
}

impl fmt::Display for ApiOrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.prefix(), self.seq())
    }
}

impl FromStr for ApiOrderId {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, seq) = s
            .split_once('-')
            .ok_or("order id must look like <hex>-<seq>")?;
        if prefix.len() != 16 {
            return Err("order id prefix must be 16 hex digits");
        }
        let prefix = u64::from_str_radix(prefix, 16).map_err(|_| "bad order id prefix")?;
        let seq: u64 = seq.parse().map_err(|_| "bad order id seq")?;
        if seq == 0 {
            return Err("order id seq starts at 1");
        }
        Ok(ApiOrderId(OrderId(
            (u128::from(prefix) << 64) | u128::from(seq),
        )))
    }
}

/// A hash of the market configuration: every member of a network must share it
/// (the transport refuses peers with another one).
pub fn market_hash(markets: &[MarketSpec]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"p2p-exchange/markets/v1\0");
    for market in markets {
        for part in [
            market.name.clone(),
            market.tick_size.normalize().to_string(),
            market.lot_size.normalize().to_string(),
        ] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hasher.finalize().into()
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_round_trip_through_the_api_form() {
        let node = NodeId::from_bytes([0xab; 32]);
        let id = ApiOrderId(order_id(&node, 42));
        assert_eq!(id.to_string(), "abababababababab-42");
        assert_eq!("abababababababab-42".parse::<ApiOrderId>(), Ok(id));
        for bad in [
            "",
            "x-1",
            "abababababababab",
            "abababababababab-0",
            "ab-1",
            "abababababababab-x",
        ] {
            assert!(bad.parse::<ApiOrderId>().is_err(), "{bad}");
        }
    }
}
