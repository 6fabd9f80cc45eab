//! Honest partitions (DESIGN.md G6; issue 7's first "Done when") with real processes: five
//! nodes, each in its own network namespace on one bridge, `EVICT_AFTER_MS=2000`. Nodes 4 and 5
//! are cut from nodes 1, 2 and 3 both ways (blackhole routes). Both sides keep accepting orders
//! as pending; only the majority settles: it evicts the two silent members and trades, while the
//! minority stalls. After the heal the minority's partition-time orders are rejected with a
//! reason on every node, the evicted nodes join again by themselves, a new crossing pair placed
//! on a rejoined node trades everywhere, and all five digests agree.

use anyhow::Context;
use p2p_exchange_tests::{Netns, NsNode, limit, netns_unavailable, skip, wait_for};
use serde_json::Value;
use std::time::Duration;

const EVICT_AFTER_MS: u64 = 2000;

#[test]
fn minority_partition_stalls_the_minority_while_the_majority_evicts_and_settles() {
    if let Some(reason) = netns_unavailable() {
        return skip(&reason);
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Netns::up("partition", 5).unwrap();
    let nodes: Vec<NsNode> = (1..=5).map(|i| start(&net, dir.path(), i)).collect();
    let cluster = Cluster { nodes: &nodes };
    cluster.wait("five meshed members", Duration::from_secs(60), |s| {
        Ok(s.iter().all(|s| peers(s) == 4 && members(s) == 5))
    });

    // The cut: {4, 5} | {1, 2, 3}, both ways.
    net.partition(&[4, 5], &[1, 2, 3]).unwrap();
    cluster.wait("the cut seen on both sides", Duration::from_secs(30), |s| {
        Ok(s[..3].iter().all(|s| peers(s) == 2) && s[3..].iter().all(|s| peers(s) == 1))
    });
    let minority_settled: Vec<u64> = cluster.statuses().unwrap()[3..]
        .iter()
        .map(settled)
        .collect();

    // Both sides accept orders, as pending.
    let majority_sell = place(&nodes[0], "sell", "100.00");
    let majority_buy = place(&nodes[1], "buy", "100.00");
    let minority_sell = place(&nodes[3], "sell", "101.00");
    let minority_buy = place(&nodes[4], "buy", "101.00");

    // The majority evicts the two silent members and keeps settling: its pair trades.
    cluster.wait(
        "the majority: 2 evictions, 3 members, its crossing pair traded",
        Duration::from_secs(40),
        |s| {
            for (i, s) in s[..3].iter().enumerate() {
                let trades = nodes[i]
                    .get("/v1/markets/BTC-USD/trades")
                    .with_context(|| format!("node{}", i + 1))?;
                if count(&s["evictions"]) != 2
                    || members(s) != 3
                    || !traded(&trades, &majority_sell, &majority_buy)
                {
                    anyhow::bail!(
                        "node{}: evictions {} members {} trades {trades}",
                        i + 1,
                        s["evictions"],
                        members(s)
                    );
                }
            }
            Ok(true)
        },
    );
    // The minority stalls: nothing more settled, its orders still pending, no trade, and it
    // cannot evict anyone (no majority), so it still counts five members.
    let statuses = cluster.statuses().unwrap();
    for (k, i) in [3usize, 4].into_iter().enumerate() {
        let s = &statuses[i];
        assert_eq!(
            settled(s),
            minority_settled[k],
            "node{} settled during the partition: {s}",
            i + 1
        );
        assert_eq!(members(s), 5, "node{} changed membership: {s}", i + 1);
        assert_eq!(count(&s["evictions"]), 0, "node{} evicted: {s}", i + 1);
        assert!(
            s["stalled_ms"].as_u64().is_some_and(|ms| ms > 0),
            "node{} does not show its stall: {s}",
            i + 1
        );
        let trades = nodes[i].get("/v1/markets/BTC-USD/trades").unwrap();
        assert!(
            !traded(&trades, &minority_sell, &minority_buy),
            "the minority traded: {trades}"
        );
        for id in [&minority_sell, &minority_buy] {
            let order = nodes[i].get(&format!("/v1/orders/{id}")).unwrap();
            assert_eq!(order["status"], "pending", "node{}: {order}", i + 1);
        }
    }
    // ...while the majority's settled count keeps growing.
    assert!(
        statuses[..3]
            .iter()
            .all(|s| settled(s) > minority_settled[0]),
        "the majority did not settle past the minority: {statuses:?}"
    );

    // Heal: the minority learns of its eviction, rejects its partition-time orders with a
    // reason, and joins again.
    net.heal_all().unwrap();
    cluster.wait(
        "five members again and the minority's orders rejected with a reason everywhere",
        Duration::from_secs(60),
        |s| {
            for (i, s) in s.iter().enumerate() {
                if members(s) != 5 {
                    anyhow::bail!("node{}: {} members", i + 1, members(s));
                }
                for id in [&minority_sell, &minority_buy] {
                    let order = nodes[i]
                        .get(&format!("/v1/orders/{id}"))
                        .with_context(|| format!("node{}", i + 1))?;
                    let reason = order["reason"].as_str().unwrap_or("");
                    if order["status"] != "rejected" || reason.is_empty() {
                        anyhow::bail!("node{}: {order}", i + 1);
                    }
                }
            }
            Ok(true)
        },
    );

    // A rejoined node trades again, and everyone converges.
    let sell = place(&nodes[3], "sell", "102.00");
    let buy = place(&nodes[0], "buy", "102.00");
    cluster.wait(
        "the rejoined node's trade on every node, nothing pending, one digest",
        Duration::from_secs(40),
        |s| {
            for (i, node) in nodes.iter().enumerate() {
                let trades = node
                    .get("/v1/markets/BTC-USD/trades")
                    .with_context(|| format!("node{}", i + 1))?;
                if !traded(&trades, &sell, &buy) || !traded(&trades, &majority_sell, &majority_buy)
                {
                    anyhow::bail!("node{}: trades {trades}", i + 1);
                }
            }
            Ok(s.iter().all(|s| s["pending_events"].as_u64() == Some(0))
                && s.windows(2).all(|w| {
                    w[0]["digest"] == w[1]["digest"]
                        && w[0]["settled_events"] == w[1]["settled_events"]
                }))
        },
    );
    drop(nodes);
    drop(net);
}

fn start(net: &Netns, dir: &std::path::Path, i: usize) -> NsNode {
    let mut env = vec![
        ("NETWORK_ID", "it-partition".to_owned()),
        ("P2P_HOST", net.addr(i)),
        ("P2P_PORT", "4000".to_owned()),
        ("DISCOVERY_MDNS", "false".to_owned()),
        ("DISCOVERY_GRENACHE", "false".to_owned()),
        ("HEARTBEAT_MS", "250".to_owned()),
        ("PEER_RECONNECT_INTERVAL", "1000".to_owned()),
        ("EVICT_AFTER_MS", EVICT_AFTER_MS.to_string()),
    ];
    if i == 1 {
        env.push(("FOUND", "true".to_owned()));
    } else {
        let peers: Vec<String> = (1..=5)
            .filter(|&j| j != i)
            .map(|j| format!("{}:4000", net.addr(j)))
            .collect();
        env.push(("BOOTSTRAP_PEERS", peers.join(",")));
    }
    NsNode::start(&net.host_ns(i), &dir.join(format!("n{i}")), 8000, &env).unwrap()
}

/// The five nodes, waited on together; a timeout fails with every node's log tail.
struct Cluster<'a> {
    nodes: &'a [NsNode],
}

impl Cluster<'_> {
    fn statuses(&self) -> anyhow::Result<Vec<Value>> {
        self.nodes.iter().map(NsNode::status).collect()
    }

    fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&[Value]) -> anyhow::Result<bool>,
    ) {
        wait_for(timeout, what, || condition(&self.statuses()?)).unwrap_or_else(|e| {
            let logs: Vec<String> = self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| format!("--- node{} ---\n{}", i + 1, n.log_tail()))
                .collect();
            panic!("{e}\n{}", logs.join("\n"))
        });
    }
}

/// Places a limit order of 1 BTC and checks it is accepted as pending; returns its id.
fn place(node: &NsNode, side: &str, price: &str) -> String {
    let answer = node.place(limit(side, price, "1")).unwrap();
    assert_eq!(answer["status"], "pending", "{answer}");
    answer["order_id"].as_str().unwrap().to_owned()
}

/// Whether `trades` holds a trade between `maker` and `taker`.
fn traded(trades: &Value, maker: &str, taker: &str) -> bool {
    trades.as_array().is_some_and(|list| {
        list.iter()
            .any(|t| t["maker_order_id"] == maker && t["taker_order_id"] == taker)
    })
}

fn peers(status: &Value) -> u64 {
    status["peers"].as_u64().unwrap_or(u64::MAX)
}

fn members(status: &Value) -> usize {
    status["members"].as_array().map_or(0, Vec::len)
}

fn settled(status: &Value) -> u64 {
    status["settled_events"].as_u64().unwrap_or(0)
}

/// A count given as a number or as a list (of evictions, suspects, ...).
fn count(value: &Value) -> u64 {
    value
        .as_u64()
        .or_else(|| value.as_array().map(|a| a.len() as u64))
        .unwrap_or(0)
}
