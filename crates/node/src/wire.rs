//! Conversions between the engine's plain maps and wire types.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use peer_protocol::NodeId;

/// Builds the wire form of a delivered clock (origin -> highest contiguous seq).
pub(crate) fn clock_to_wire<C: FromIterator<(NodeId, u64)>>(clock: &BTreeMap<NodeId, u64>) -> C {
    clock.iter().map(|(k, v)| (*k, *v)).collect()
}

/// Reads the wire form of a delivered clock.
pub(crate) fn clock_from_wire<'a, C, V>(clock: &'a C) -> BTreeMap<NodeId, u64>
where
    &'a C: IntoIterator<Item = (&'a NodeId, V)>,
    V: Borrow<u64>,
{
    clock.into_iter().map(|(k, v)| (*k, *v.borrow())).collect()
}
