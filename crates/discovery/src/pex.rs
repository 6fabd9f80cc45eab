//! Peer exchange: what to accept from a peer's `Peers` list, and what to share in ours.
//!
//! The node calls [`filter`] on every received list and [`shareable`] to answer a request.
//! Both are bounded by [`MAX_PEERS_PER_MESSAGE`] and pure apart from reading the peer table.

use crate::{Candidate, is_dialable};
use peer_protocol::{MAX_PEERS_PER_MESSAGE, NodeId, PeerAddress};
use peer_storage::{PeerStore, Source};
use std::net::SocketAddr;

/// Who we are, so that we never dial ourselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Local {
    /// Our node id.
    pub node_id: Option<NodeId>,
    /// The addresses we listen on or are known under (the P2P listen address, and any address
    /// peers reported for us). An unspecified listen address (`0.0.0.0:3000`) also covers
    /// loopback on that port.
    pub addrs: Vec<SocketAddr>,
}

impl Local {
    /// Whether `addr` (or the node id) is ours.
    pub fn is_own(&self, addr: SocketAddr, node_id: Option<&NodeId>) -> bool {
        if node_id.is_some() && node_id == self.node_id.as_ref() {
            return true;
        }
        self.addrs.iter().any(|own| {
            *own == addr
                || (own.port() == addr.port()
                    && own.ip().is_unspecified()
                    && addr.ip().is_loopback())
        })
    }
}

/// The candidates worth dialing from a peer's list: at most [`MAX_PEERS_PER_MESSAGE`] entries
/// are looked at, each address once, dialable ones only (no unspecified, multicast or broadcast
/// address, no port 0), never ours, none banned in `store` at `now`.
pub fn filter(
    received: Vec<PeerAddress>,
    local: &Local,
    store: &dyn PeerStore,
    now: u64,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for peer in received.into_iter().take(MAX_PEERS_PER_MESSAGE) {
        if !is_dialable(peer.addr)
            || local.is_own(peer.addr, peer.node_id.as_ref())
            || store.is_banned(peer.addr, now)
            || out.iter().any(|c| c.addr == peer.addr)
        {
            continue;
        }
        out.push(Candidate {
            addr: peer.addr,
            node_id: peer.node_id,
            source: Source::Exchange,
        });
    }
    out
}

/// The peers we tell others about: up to `limit` (at most [`MAX_PEERS_PER_MESSAGE`]) unbanned
/// peers of `store` that we reached ourselves at least once, best score first. Inbound-only
/// addresses are not shared (their port is ephemeral).
pub fn shareable(store: &dyn PeerStore, limit: usize, now: u64) -> Vec<PeerAddress> {
    let limit = limit.min(MAX_PEERS_PER_MESSAGE);
    store
        .best(limit.saturating_mul(4), now)
        .into_iter()
        .filter(|r| r.successes > 0 && r.source != Source::Inbound && is_dialable(r.addr))
        .take(limit)
        .map(|r| PeerAddress {
            addr: r.addr,
            node_id: r.node_id.as_deref().and_then(|id| id.parse().ok()),
        })
        .collect()
}
