//! The seed's quick start, as written in the README: three nodes started from one folder with
//! only different `P2P_PORT`s, the later two given the first as `BOOTSTRAP_PEERS`.

use p2p_exchange_tests::{NodeProcess, NodeSpec, free_port_block, get_json, limit, wait_for};
use std::time::Duration;

#[test]
fn three_nodes_from_one_folder_mesh_and_trade() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_block(3);
    let spec = |i: u16| NodeSpec {
        p2p_port: base + i,
        cwd: dir.path().to_path_buf(),
        bootstrap: if i == 0 { vec![] } else { vec![base] },
        ..NodeSpec::default()
    };
    // The first node finds nobody within its join window and founds the network.
    let nodes: Vec<NodeProcess> = (0..3)
        .map(|i| NodeProcess::start(&spec(i)).unwrap())
        .collect();

    wait_for(Duration::from_secs(30), "three meshed members", || {
        Ok(nodes.iter().all(|n| {
            n.status().is_ok_and(|s| {
                s["peers"].as_u64() == Some(2) && s["members"].as_array().map(Vec::len) == Some(3)
            })
        }))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[2].log_tail()));

    // Separate data directories and API ports derived from P2P_PORT.
    for n in &nodes {
        assert!(
            dir.path()
                .join(format!("data/node-{}", n.p2p_port))
                .is_dir()
        );
        assert_eq!(n.api.port(), n.p2p_port + 5000);
    }

    // A crossing pair placed on two different nodes trades once, identically everywhere.
    nodes[0].place(limit("sell", "100.00", "1")).unwrap();
    nodes[1].place(limit("buy", "100.00", "1")).unwrap();
    wait_for(Duration::from_secs(30), "the trade on every node", || {
        let trades: Vec<_> = nodes
            .iter()
            .map(|n| get_json(n.api, "/v1/markets/BTC-USD/trades?limit=10"))
            .collect::<Result<_, _>>()?;
        Ok(trades.iter().all(|t| t.as_array().map(Vec::len) == Some(1))
            && trades.windows(2).all(|w| w[0] == w[1]))
    })
    .unwrap();
    let trades = get_json(nodes[2].api, "/v1/markets/BTC-USD/trades").unwrap();
    assert_eq!(trades[0]["price"], "100.00");
    // Decimals come back at the market's scale (lot 0.0001).
    assert_eq!(trades[0]["quantity"], "1.0000");
    assert_eq!(trades[0]["taker_side"], "buy");

    // Graceful shutdown on SIGTERM exits successfully.
    for mut n in nodes {
        assert!(
            n.terminate(),
            "node {} did not exit cleanly on SIGTERM",
            n.p2p_port
        );
    }
}
