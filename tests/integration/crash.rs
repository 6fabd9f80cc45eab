//! Durability (DESIGN.md G4): a node killed with SIGKILL under load and restarted loses none of
//! the orders it acknowledged, and every node converges to the same digest.

use p2p_exchange_tests::{NodeProcess, NodeSpec, free_port_block, get_json, limit, wait_for};
use std::time::Duration;

#[test]
fn kill_9_under_load_loses_no_acknowledged_order() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_block(3);
    let spec = |i: u16| NodeSpec {
        p2p_port: base + i,
        cwd: dir.path().to_path_buf(),
        data_dir: Some(dir.path().join(format!("node{i}"))),
        bootstrap: if i == 0 { vec![] } else { vec![base] },
        found: i == 0,
        ..NodeSpec::default()
    };
    let mut nodes: Vec<NodeProcess> = (0..3)
        .map(|i| NodeProcess::start(&spec(i)).unwrap())
        .collect();
    wait_for(Duration::from_secs(30), "three members", || {
        Ok(nodes.iter().all(|n| {
            n.status()
                .is_ok_and(|s| s["members"].as_array().map(Vec::len) == Some(3))
        }))
    })
    .unwrap();

    // Orders on every node, many crossing; the victim (node 2) is killed half way through.
    let mut acknowledged = Vec::new();
    for round in 0..200u32 {
        if round == 100 {
            nodes[2].kill9();
            nodes[2] = NodeProcess::start(&spec(2)).unwrap();
        }
        let node = &nodes[(round % 3) as usize];
        let side = if round % 2 == 0 { "buy" } else { "sell" };
        let price = format!("{}.00", 100 + (round % 5));
        let answer = node.place(limit(side, &price, "1")).unwrap();
        acknowledged.push(answer["order_id"].as_str().unwrap().to_owned());
    }

    wait_for(
        Duration::from_secs(60),
        "one digest and nothing pending",
        || {
            let statuses: Vec<_> = nodes.iter().map(|n| n.status()).collect::<Result<_, _>>()?;
            Ok(statuses
                .iter()
                .all(|s| s["pending_events"].as_u64() == Some(0))
                && statuses
                    .windows(2)
                    .all(|w| w[0]["digest"] == w[1]["digest"]))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[2].log_tail()));

    for node in &nodes {
        for id in &acknowledged {
            let order = get_json(node.api, &format!("/v1/orders/{id}"))
                .unwrap_or_else(|e| panic!("order {id} missing on {}: {e}", node.p2p_port));
            assert_ne!(order["status"], "pending", "order {id} still pending");
        }
    }
}
