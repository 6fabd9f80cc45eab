//! Discovery end to end: pure P2P (bootstrap, peer exchange, then persisted peers after a
//! restart with no bootstrap list) on loopback, and mDNS across three network namespaces.

use p2p_exchange_tests::{
    Netns, NodeProcess, NodeSpec, NsNode, free_port_block, get_json, limit, netns_unavailable,
    wait_for,
};
use serde_json::Value;
use std::time::Duration;

/// Whether every status shows `peers` connected peers, `members` members, one trade and one
/// digest at one settled position.
fn converged(statuses: &[Value], trades: &[Value], peers: u64, members: usize) -> bool {
    statuses.iter().all(|s| {
        s["peers"].as_u64() == Some(peers) && s["members"].as_array().map(Vec::len) == Some(members)
    }) && trades.iter().all(|t| t.as_array().map(Vec::len) == Some(1))
        && statuses.windows(2).all(|w| {
            w[0]["digest"] == w[1]["digest"] && w[0]["settled_events"] == w[1]["settled_events"]
        })
}

#[test]
fn pure_p2p_peer_exchange_then_restart_from_persisted_peers() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_block(3);
    let spec = |i: u16, bootstrap: Vec<u16>| NodeSpec {
        p2p_port: base + i,
        cwd: dir.path().to_path_buf(),
        bootstrap,
        found: i == 0,
        ..NodeSpec::default()
    };
    // Node 2 knows only node 1 (index 0); node 3 knows only node 1 too.
    let mut nodes: Vec<NodeProcess> = vec![
        NodeProcess::start(&spec(0, vec![])).unwrap(),
        NodeProcess::start(&spec(1, vec![base])).unwrap(),
        NodeProcess::start(&spec(2, vec![base])).unwrap(),
    ];
    wait_for(
        Duration::from_secs(20),
        "a full mesh by peer exchange",
        || {
            let statuses: Vec<Value> =
                nodes.iter().map(|n| n.status()).collect::<Result<_, _>>()?;
            Ok(statuses.iter().all(|s| {
                s["peers"].as_u64() == Some(2) && s["members"].as_array().map(Vec::len) == Some(3)
            }))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[2].log_tail()));
    // Node 3 is connected to node 2, which it was never told about.
    let peers = get_json(nodes[2].api, "/v1/peers").unwrap();
    let node2 = nodes[1].status().unwrap()["node_id"].clone();
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["node_id"] == node2),
        "node 3 is not connected to node 2: {peers}"
    );
    nodes[0].place(limit("sell", "100.00", "1")).unwrap();
    nodes[2].place(limit("buy", "100.00", "1")).unwrap();
    let check = |nodes: &[NodeProcess]| -> anyhow::Result<bool> {
        let statuses: Vec<Value> = nodes.iter().map(|n| n.status()).collect::<Result<_, _>>()?;
        let trades: Vec<Value> = nodes
            .iter()
            .map(|n| get_json(n.api, "/v1/markets/BTC-USD/trades"))
            .collect::<Result<_, _>>()?;
        Ok(converged(&statuses, &trades, 2, 3))
    };
    wait_for(Duration::from_secs(20), "one trade, one digest", || {
        check(&nodes)
    })
    .unwrap();

    // Restart all three with no bootstrap list: the persisted peer tables reconnect them.
    for n in &mut nodes {
        assert!(n.terminate(), "node {} did not stop cleanly", n.p2p_port);
    }
    drop(nodes);
    let nodes: Vec<NodeProcess> = (0..3)
        .map(|i| NodeProcess::start(&spec(i, vec![])).unwrap())
        .collect();
    wait_for(
        Duration::from_secs(30),
        "a full mesh from persisted peers",
        || check(&nodes),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[2].log_tail()));
}

#[test]
fn mdns_in_three_namespaces_discovers_and_converges() {
    if let Some(reason) = netns_unavailable() {
        p2p_exchange_tests::skip(&reason);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Netns::up("mdns", 3).unwrap();
    let nodes: Vec<NsNode> = (1..=3)
        .map(|i| {
            let mut env = vec![
                ("NETWORK_ID", "it-mdns".to_owned()),
                ("P2P_HOST", net.addr(i)),
                ("P2P_PORT", "4000".to_owned()),
                ("DISCOVERY_MDNS", "true".to_owned()),
                // Pinned to the namespace's own interface, never a real one.
                ("MDNS_INTERFACES", "veth0".to_owned()),
                ("DISCOVERY_GRENACHE", "false".to_owned()),
                ("JOIN_WINDOW_MS", "15000".to_owned()),
            ];
            if i == 1 {
                env.push(("FOUND", "true".to_owned()));
            }
            NsNode::start(
                &net.host_ns(i),
                &dir.path().join(format!("n{i}")),
                8000,
                &env,
            )
            .unwrap()
        })
        .collect();
    let check = |trades: bool| -> anyhow::Result<bool> {
        let statuses: Vec<Value> = nodes.iter().map(|n| n.status()).collect::<Result<_, _>>()?;
        if !trades {
            return Ok(statuses.iter().all(|s| {
                s["peers"].as_u64() == Some(2) && s["members"].as_array().map(Vec::len) == Some(3)
            }));
        }
        let trades: Vec<Value> = nodes
            .iter()
            .map(|n| n.get("/v1/markets/BTC-USD/trades"))
            .collect::<Result<_, _>>()?;
        Ok(converged(&statuses, &trades, 2, 3))
    };
    wait_for(
        Duration::from_secs(30),
        "three members found by mDNS",
        || check(false),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", nodes[1].log_tail(), nodes[2].log_tail()));
    nodes[1].place(limit("sell", "100.00", "1")).unwrap();
    nodes[2].place(limit("buy", "100.00", "1")).unwrap();
    wait_for(Duration::from_secs(20), "one trade, one digest", || {
        check(true)
    })
    .unwrap();
    drop(nodes);
    drop(net);
}
