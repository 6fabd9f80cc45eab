//! Hybrid mode end to end, with real Grapes: nodes with no bootstrap list find each other
//! through the Grapes and trade; a member whose direct TCP path is blocked still gets events
//! through the Grenache RPC fallback; an unmodified Node.js grenache client trades against a
//! Rust node.

use p2p_exchange_tests::{
    Grapes, Netns, NodeProcess, NodeSpec, NsNode, free_port_block, get_json, grenache_modules, ip,
    limit, netns_unavailable, skip, wait_for,
};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Starts `count` hybrid nodes on loopback (no bootstrap list; the first founds the network),
/// alternating between the two Grapes.
fn hybrid_nodes(dir: &Path, grapes: &Grapes, network: &str, count: u16) -> Vec<NodeProcess> {
    let base = free_port_block(count);
    (0..count)
        .map(|i| {
            let spec = NodeSpec {
                p2p_port: base + i,
                cwd: dir.to_path_buf(),
                found: i == 0,
                env: vec![
                    ("NETWORK_ID".into(), network.into()),
                    ("DISCOVERY_GRENACHE".into(), "true".into()),
                    ("GRAPE_URL".into(), grapes.url(i as usize).into()),
                    ("RPC_PORT".into(), "0".into()),
                    ("JOIN_WINDOW_MS".into(), "20000".into()),
                ],
                ..NodeSpec::default()
            };
            NodeProcess::start(&spec).unwrap()
        })
        .collect()
}

fn statuses(nodes: &[NodeProcess]) -> anyhow::Result<Vec<Value>> {
    nodes.iter().map(|n| n.status()).collect()
}

fn same_digest(statuses: &[Value]) -> bool {
    statuses.windows(2).all(|w| {
        w[0]["digest"] == w[1]["digest"] && w[0]["settled_events"] == w[1]["settled_events"]
    })
}

#[test]
fn hybrid_nodes_find_each_other_through_grapes_and_converge() {
    let modules = match grenache_modules() {
        Ok(m) => m,
        Err(reason) => return skip(&reason),
    };
    let grapes = Grapes::start(&modules).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nodes = hybrid_nodes(dir.path(), &grapes, "it-hybrid", 3);
    wait_for(
        Duration::from_secs(40),
        "three members meshed via grapes",
        || {
            Ok(statuses(&nodes)?.iter().all(|s| {
                s["peers"].as_u64() == Some(2) && s["members"].as_array().map(Vec::len) == Some(3)
            }))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[2].log_tail()));
    nodes[1].place(limit("sell", "100.00", "1")).unwrap();
    nodes[2].place(limit("buy", "100.00", "1")).unwrap();
    wait_for(Duration::from_secs(20), "one trade, one digest", || {
        let trades: Vec<Value> = nodes
            .iter()
            .map(|n| get_json(n.api, "/v1/markets/BTC-USD/trades"))
            .collect::<Result<_, _>>()?;
        Ok(trades.iter().all(|t| t.as_array().map(Vec::len) == Some(1))
            && same_digest(&statuses(&nodes)?))
    })
    .unwrap();
}

#[test]
fn blocked_tcp_path_still_delivers_through_the_rpc_fallback() {
    if let Some(reason) = netns_unavailable() {
        return skip(&reason);
    }
    let modules = match grenache_modules() {
        Ok(m) => m,
        Err(reason) => return skip(&reason),
    };
    let dir = tempfile::tempdir().unwrap();
    let net = Netns::up("rpc", 2).unwrap();
    let (ns1, ns2) = (net.host_ns(1), net.host_ns(2));
    let (a1, a2) = (net.addr(1), net.addr(2));
    // One Grape per host, as in a real deployment.
    let grapes = Grapes::start_in(&modules, [(&ns1, &a1), (&ns2, &a2)]).unwrap();
    let env = |i: usize| {
        let mut env = vec![
            ("NETWORK_ID", "it-fallback".to_owned()),
            ("P2P_HOST", net.addr(i)),
            ("P2P_PORT", "4000".to_owned()),
            ("RPC_PORT", "4600".to_owned()),
            ("HEARTBEAT_MS", "200".to_owned()),
            ("DISCOVERY_MDNS", "false".to_owned()),
            ("DISCOVERY_GRENACHE", "true".to_owned()),
            ("GRAPE_URL", grapes.url(i - 1).to_owned()),
            ("RUST_LOG", "info,node::rpc=debug".to_owned()),
        ];
        if i == 1 {
            env.push(("FOUND", "true".to_owned()));
        } else {
            env.push(("BOOTSTRAP_PEERS", format!("{a1}:4000")));
        }
        env
    };
    let nodes = [
        NsNode::start(&ns1, &dir.path().join("n1"), 8000, &env(1)).unwrap(),
        NsNode::start(&ns2, &dir.path().join("n2"), 8000, &env(2)).unwrap(),
    ];
    let statuses = || -> anyhow::Result<Vec<Value>> { nodes.iter().map(NsNode::status).collect() };
    wait_for(Duration::from_secs(20), "two connected members", || {
        Ok(statuses()?.iter().all(|s| {
            s["peers"].as_u64() == Some(1) && s["members"].as_array().map(Vec::len) == Some(2)
        }))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[1].log_tail()));

    // Block the P2P port between the two hosts, both ways (new and established connections);
    // the RPC port and the Grapes stay reachable.
    for (ns, other) in [(&ns1, &a2), (&ns2, &a1)] {
        for (pref, dir) in [("100", "dport"), ("101", "sport")] {
            ip(&[
                "-n", ns, "rule", "add", "pref", pref, "to", other, "ipproto", "tcp", dir, "4000",
                "prohibit",
            ])
            .unwrap();
        }
    }
    wait_for(Duration::from_secs(15), "the tcp link to drop", || {
        Ok(statuses()?.iter().all(|s| s["peers"].as_u64() == Some(0)))
    })
    .unwrap();

    nodes[0].place(limit("sell", "100.00", "1")).unwrap();
    nodes[1].place(limit("buy", "100.00", "1")).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the trade on both sides via rpc",
        || {
            let trades: Vec<Value> = nodes
                .iter()
                .map(|n| n.get("/v1/markets/BTC-USD/trades"))
                .collect::<Result<_, _>>()?;
            let statuses = statuses()?;
            let done = trades.iter().all(|t| t.as_array().map(Vec::len) == Some(1))
                && same_digest(&statuses)
                && statuses
                    .iter()
                    .all(|s| s["pending_events"].as_u64() == Some(0));
            if !done {
                anyhow::bail!("not yet: trades {trades:?}, statuses {statuses:?}");
            }
            Ok(true)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", nodes[0].log_tail(), nodes[1].log_tail()));
    // Still no TCP path: everything above crossed through the RPC fallback.
    assert!(
        statuses()
            .unwrap()
            .iter()
            .all(|s| s["peers"].as_u64() == Some(0))
    );
    drop(nodes);
    drop(grapes);
    drop(net);
}

/// An unmodified grenache-nodejs-link + grenache-nodejs-http client.
const INTEROP_JS: &str = r#"
'use strict'
const Link = require('grenache-nodejs-link')
const { PeerRPCClient } = require('grenache-nodejs-http')
const [grape, service] = process.argv.slice(2)
const link = new Link({ grape, requestTimeout: 5000 })
link.start()
const peer = new PeerRPCClient(link, {})
peer.init()
function finish (code, out) {
  if (out) console.log(JSON.stringify(out))
  peer.stop(); link.stop(); process.exit(code)
}
setTimeout(() => { console.error('interop script timed out'); finish(2) }, 25000).unref()
const ask = (payload) => new Promise((resolve, reject) =>
  peer.request(service, payload, { timeout: 10000 }, (err, res) => err ? reject(err) : resolve(res)))
;(async () => {
  const book = await ask({ action: 'book', market: 'BTC-USD' })
  const placed = await ask({ action: 'place', market: 'BTC-USD', side: 'buy', type: 'limit',
    price: '101.00', quantity: '0.5', time_in_force: 'gtc', client_order_id: 'js-1' })
  let err = null
  try { await ask({ action: 'book', market: 'NOPE-USD' }) } catch (e) { err = e.message }
  finish(0, { book, placed, err })
})().catch((e) => { console.error('request failed: ' + e.message); finish(1) })
"#;

#[test]
fn nodejs_grenache_client_trades_against_a_rust_node() {
    let modules = match grenache_modules() {
        Ok(m) => m,
        Err(reason) => return skip(&reason),
    };
    let grapes = Grapes::start(&modules).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nodes = hybrid_nodes(dir.path(), &grapes, "it-interop", 2);
    wait_for(Duration::from_secs(40), "two members", || {
        Ok(statuses(&nodes)?.iter().all(|s| {
            s["peers"].as_u64() == Some(1) && s["members"].as_array().map(Vec::len) == Some(2)
        }))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[1].log_tail()));
    let script = dir.path().join("interop.js");
    std::fs::write(&script, INTEROP_JS).unwrap();
    // The Node.js client finds the service through the second Grape.
    let out = Command::new("node")
        .arg(&script)
        .arg(grapes.url(1))
        .arg("p2p-exchange-rpc/it-interop")
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "interop script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["book"]["market"], "BTC-USD");
    assert_eq!(result["book"]["bids"], json!([]));
    assert_eq!(result["placed"]["client_order_id"], "js-1", "{result}");
    assert_eq!(result["placed"]["status"], "pending", "{result}");
    assert!(
        result["err"]
            .as_str()
            .is_some_and(|e| e.starts_with("unknown_market")),
        "{result}"
    );
    let order_id = result["placed"]["order_id"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(20), "the order on every node", || {
        for n in &nodes {
            let book = get_json(n.api, "/v1/markets/BTC-USD/book")?;
            let order = get_json(n.api, &format!("/v1/orders/{order_id}"))?;
            if book["bids"] != json!([["101.00", "0.5000"]]) || order["status"] != "open" {
                anyhow::bail!("node {}: book {book}, order {order}", n.p2p_port);
            }
        }
        Ok(true)
    })
    .unwrap();
}
