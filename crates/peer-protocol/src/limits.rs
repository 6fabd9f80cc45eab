//! Protocol limits: every list and string a peer sends is checked against one of these after
//! decoding, and a message beyond them is misbehaviour.

use crate::Error;

/// The largest frame payload a peer may send (4 MiB); checked before anything is allocated.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;
/// The most addresses one `Peers` message may carry.
pub const MAX_PEERS_PER_MESSAGE: usize = 64;
/// The most events one [`SignedBatch`](crate::SignedBatch) may carry.
pub const MAX_EVENTS_PER_BATCH: usize = 4096;
/// The most batches one `SyncResponse` may carry.
pub const MAX_BATCHES_PER_SYNC: usize = 1024;
/// The most entries of any membership-sized list: members, vector clock entries, eviction votes.
pub const MAX_MEMBERS: usize = 1024;
/// The longest `NETWORK_ID`, in bytes.
pub const MAX_NETWORK_ID_LEN: usize = 64;
/// The longest agent string in a `Hello`, in bytes.
pub const MAX_AGENT_LEN: usize = 128;
/// The longest market symbol, in bytes.
pub const MAX_MARKET_LEN: usize = 32;
/// The longest client order id, in bytes.
pub const MAX_CLIENT_ORDER_ID_LEN: usize = 64;
/// The longest free-text `Goodbye` reason, in bytes.
pub const MAX_GOODBYE_TEXT_LEN: usize = 256;

pub(crate) fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), Error> {
    if len > max {
        Err(Error::LimitExceeded { what, len, max })
    } else {
        Ok(())
    }
}
