//! Integration tests of `discovery`: bootstrap resolution, persisted ordering, peer-exchange
//! filtering, the Grenache adapter against real Grapes, and mDNS between network namespaces.
//!
//! Tests whose prerequisites are missing (the grenache npm install, root and `ip` for
//! namespaces) print `SKIPPED: <reason>` and pass, unless `P2P_EXCHANGE_REQUIRE_ALL=1`.

mod support;

use discovery::pex::{self, Local};
use discovery::{Bootstrap, Candidate, Discovery, Error, Fixed, Mdns, MdnsConfig, Persisted};
use peer_protocol::{MAX_PEERS_PER_MESSAGE, NodeId, PeerAddress};
use peer_storage::{MemoryPeerStore, PeerStore, Source};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NOW: u64 = 1_700_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn node(byte: u8) -> NodeId {
    NodeId::from_bytes([byte; 32])
}

/// Receives one candidate, failing the test after `secs`.
async fn next(rx: &mut mpsc::Receiver<Candidate>, secs: u64) -> Candidate {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .expect("no candidate in time")
        .expect("the strategy closed its sink")
}

#[tokio::test]
async fn bootstrap_resolves_host_names_and_offers_the_list_again() {
    let bootstrap = Bootstrap::parse("does-not-exist.invalid:3000, localhost:4001, 127.0.0.1:4002")
        .unwrap()
        .interval(Duration::from_millis(50));
    let resolved = bootstrap.resolve().await;
    let addrs: Vec<SocketAddr> = resolved.iter().map(|c| c.addr).collect();
    assert!(
        addrs
            .iter()
            .any(|a| a.ip().is_loopback() && a.port() == 4001),
        "{addrs:?}"
    );
    assert_eq!(addrs.last(), Some(&addr("127.0.0.1:4002")));
    assert!(
        resolved
            .iter()
            .all(|c| c.source == Source::Bootstrap && c.node_id.is_none())
    );

    // The task offers the whole list again every interval: 127.0.0.1:4002 shows up repeatedly.
    let (sink, mut rx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let task = discovery::spawn(Box::new(bootstrap), sink, shutdown.clone());
    let mut seen = 0;
    while seen < 3 {
        if next(&mut rx, 20).await.addr == addr("127.0.0.1:4002") {
            seen += 1;
        }
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn persisted_peers_come_best_first_without_banned_or_inbound_ones() {
    let store = Arc::new(MemoryPeerStore::new(100));
    let (good, better, fresh, failing, banned, inbound) = (
        addr("10.0.0.1:3000"),
        addr("10.0.0.2:3000"),
        addr("10.0.0.3:3000"),
        addr("10.0.0.4:3000"),
        addr("10.0.0.5:3000"),
        addr("10.0.0.6:51234"),
    );
    for a in [good, better, fresh, failing, banned] {
        store.upsert(a, Source::Exchange, None, NOW);
    }
    store.record_success(good, Some(node(1).to_string()), NOW);
    store.record_success(better, None, NOW);
    store.record_success(better, None, NOW);
    store.record_failure(failing, NOW);
    for _ in 0..4 {
        store.record_misbehaviour(banned, NOW);
    }
    store.record_success(inbound, None, NOW); // unknown: stored as inbound, with a high score
    store.record_success(inbound, None, NOW);
    store.record_success(inbound, None, NOW);

    let persisted = Persisted::new(store.clone());
    let order: Vec<SocketAddr> = persisted.candidates(NOW).iter().map(|c| c.addr).collect();
    assert_eq!(order, vec![better, good, fresh, failing]);
    let first_good = persisted
        .candidates(NOW)
        .into_iter()
        .find(|c| c.addr == good)
        .unwrap();
    assert_eq!(first_good.node_id, Some(node(1)));
    assert_eq!(first_good.source, Source::Exchange);
    assert_eq!(
        Persisted::new(store.clone()).limit(2).candidates(NOW).len(),
        2
    );

    // As a task it sends the same, best first.
    let (sink, mut rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let task = discovery::spawn(Box::new(persisted), sink, shutdown.clone());
    assert_eq!(next(&mut rx, 5).await.addr, better);
    assert_eq!(next(&mut rx, 5).await.addr, good);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[test]
fn peer_exchange_filters_own_banned_invalid_and_duplicate_addresses() {
    let store = MemoryPeerStore::new(100);
    let banned = addr("10.0.0.9:3000");
    for _ in 0..4 {
        store.record_misbehaviour(banned, NOW);
    }
    let local = Local {
        node_id: Some(node(1)),
        addrs: vec![addr("0.0.0.0:3000"), addr("192.168.1.5:3000")],
    };
    let peer = |a: &str, id: Option<u8>| PeerAddress {
        addr: addr(a),
        node_id: id.map(node),
    };
    let received = vec![
        peer("10.0.0.2:3000", Some(2)),
        peer("127.0.0.1:3000", None), // ours (we listen on 0.0.0.0:3000)
        peer("192.168.1.5:3000", None), // ours
        peer("10.0.0.7:3001", Some(1)), // our node id under another address
        peer("10.0.0.9:3000", Some(9)), // banned
        peer("0.0.0.0:3001", None),   // unspecified
        peer("224.0.0.251:5353", None), // multicast
        peer("10.0.0.3:0", None),     // port 0
        peer("10.0.0.2:3000", Some(2)), // duplicate
        peer("127.0.0.1:3002", None), // another local node: fine
    ];
    let got = pex::filter(received, &local, &store, NOW);
    assert_eq!(
        got,
        vec![
            Candidate {
                addr: addr("10.0.0.2:3000"),
                node_id: Some(node(2)),
                source: Source::Exchange
            },
            Candidate {
                addr: addr("127.0.0.1:3002"),
                node_id: None,
                source: Source::Exchange
            },
        ]
    );

    // A flood is cut at the protocol's bound before anything else.
    let flood: Vec<PeerAddress> = (0..1000u16)
        .map(|i| PeerAddress {
            addr: SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 4000)),
            node_id: None,
        })
        .collect();
    assert_eq!(
        pex::filter(flood, &local, &store, NOW).len(),
        MAX_PEERS_PER_MESSAGE
    );
}

#[test]
fn peer_exchange_shares_only_peers_we_reached() {
    let store = MemoryPeerStore::new(100);
    let reached = addr("10.0.0.1:3000");
    let never = addr("10.0.0.2:3000");
    let inbound = addr("10.0.0.3:50000");
    store.upsert(reached, Source::Bootstrap, None, NOW);
    store.record_success(reached, Some(node(4).to_string()), NOW);
    store.upsert(never, Source::Exchange, None, NOW);
    store.record_success(inbound, None, NOW);
    let shared = pex::shareable(&store, 10, NOW);
    assert_eq!(
        shared,
        vec![PeerAddress {
            addr: reached,
            node_id: Some(node(4))
        }]
    );
    assert!(pex::shareable(&store, 0, NOW).is_empty());
}

#[tokio::test]
async fn the_fixed_strategy_sends_its_list_and_stops_on_shutdown() {
    let list = vec![Candidate {
        addr: addr("127.0.0.1:1"),
        node_id: None,
        source: Source::Manual,
    }];
    let (sink, mut rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let task = discovery::spawn(Box::new(Fixed::new(list.clone())), sink, shutdown.clone());
    assert_eq!(next(&mut rx, 5).await, list[0]);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[cfg(not(feature = "grenache"))]
#[test]
fn without_the_feature_grenache_says_it_is_not_compiled_in() {
    assert!(!discovery::grenache_available());
    let err = discovery::Grenache::new(discovery::GrenacheConfig::new(
        "http://127.0.0.1:30001",
        "n",
        3000,
    ))
    .unwrap_err();
    assert!(matches!(err, Error::GrenacheNotCompiledIn));
    assert_eq!(
        err.to_string(),
        "grenache discovery is not compiled in (build with the `grenache` feature)"
    );
}

#[cfg(feature = "grenache")]
#[tokio::test]
async fn two_nodes_find_each_other_through_two_real_grapes() {
    use discovery::{Grenache, GrenacheConfig};
    use discovery_grenache::testing::{self, Grapes};
    assert!(discovery::grenache_available());
    assert!(matches!(
        Grenache::new(GrenacheConfig::new("not a url", "n", 1)),
        Err(Error::Grenache(_))
    ));
    let dir = match testing::installed() {
        Ok(dir) => dir,
        Err(reason) => return support::skip(&reason),
    };
    let grapes = Grapes::start(&dir).expect("grapes start");
    let network = format!("test-{}", std::process::id());
    let config = |grape: usize, port: u16| GrenacheConfig {
        announce_interval: Duration::from_millis(500),
        lookup_interval: Duration::from_millis(200),
        local: Local {
            node_id: None,
            addrs: vec![SocketAddr::from(([0, 0, 0, 0], port))],
        },
        ..GrenacheConfig::new(grapes.url(grape), network.clone(), port)
    };
    let (sink_a, mut rx_a) = mpsc::channel(16);
    let (sink_b, mut rx_b) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let a = discovery::spawn(
        Box::new(Grenache::new(config(0, 45_301)).unwrap()),
        sink_a,
        shutdown.clone(),
    );
    let b = discovery::spawn(
        Box::new(Grenache::new(config(1, 45_302)).unwrap()),
        sink_b,
        shutdown.clone(),
    );

    // Each finds the other (announced through the other Grape), and never itself.
    for (rx, own, other) in [(&mut rx_a, 45_301, 45_302), (&mut rx_b, 45_302, 45_301)] {
        loop {
            let c = next(rx, 30).await;
            assert_eq!(c.source, Source::Grenache);
            assert_ne!(c.addr.port(), own, "a node was offered its own address");
            if c.addr == SocketAddr::from(([127, 0, 0, 1], other)) {
                break;
            }
        }
    }
    shutdown.cancel();
    for task in [a, b] {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

#[cfg(feature = "grenache")]
#[tokio::test]
async fn an_unreachable_grape_never_stops_grenache_discovery() {
    use discovery::{Grenache, GrenacheConfig};
    let port = discovery_grenache::testing::free_tcp_port().unwrap();
    let (sink, _rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let strategy = Grenache::new(GrenacheConfig::new(
        format!("http://127.0.0.1:{port}"),
        "n",
        3000,
    ))
    .unwrap();
    let task = discovery::spawn(Box::new(strategy), sink, shutdown.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!task.is_finished());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Environment variables of an mDNS child process (see `mdns_namespace_child`).
const CHILD_ENV: &str = "DISCOVERY_TEST_MDNS_CHILD";

/// One mDNS node of the namespace tests, run in namespace `ns` as a child process.
struct MdnsChild {
    node: u8,
    network: &'static str,
    expect: Vec<u8>,
    interface: &'static str,
}

/// Runs the children (each until it has found what it expects, or for good if it expects
/// nothing) and returns what each of those that expect something found: `(addr, node id)`.
async fn run_mdns_children(
    children: Vec<(String, MdnsChild)>,
) -> Vec<(u8, BTreeSet<(SocketAddr, String)>)> {
    let exe = std::env::current_exe().unwrap();
    let mut running = Vec::new();
    for (ns, child) in children {
        let expect: Vec<String> = child.expect.iter().map(u8::to_string).collect();
        let process = tokio::process::Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&exe)
            .args([
                "mdns_namespace_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, child.node.to_string())
            .env("DISCOVERY_TEST_MDNS_NETWORK", child.network)
            .env("DISCOVERY_TEST_MDNS_EXPECT", expect.join(","))
            .env("DISCOVERY_TEST_MDNS_IFACE", child.interface)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        running.push((child, process));
    }
    let mut results = Vec::new();
    let mut idle = Vec::new();
    for (child, process) in running {
        if child.expect.is_empty() {
            idle.push(process);
            continue;
        }
        let out = tokio::time::timeout(Duration::from_secs(60), process.wait_with_output())
            .await
            .expect("an mdns child hung")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "mdns child {} failed\nstdout: {stdout}\nstderr: {}",
            child.node,
            String::from_utf8_lossy(&out.stderr)
        );
        let found: BTreeSet<(SocketAddr, String)> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("FOUND "))
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(a, id)| Some((a.parse().ok()?, id.to_owned())))
            .collect();
        eprintln!("node {} found {found:?}", child.node);
        results.push((child.node, found));
    }
    drop(idle); // killed
    results
}

/// Three nodes of one network and one of another, each in its own namespace on one bridge,
/// run `Mdns` pinned to their `veth0`; each of the three finds the two others (with their node
/// ids and namespace addresses), and nobody reports the node of the other network.
#[tokio::test]
async fn mdns_nodes_in_three_namespaces_find_each_other_and_only_their_network() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    if let Some(reason) = support::netns::unavailable() {
        return support::skip(&reason);
    }
    let net = match support::netns::Network::up("br", 4) {
        Ok(net) => net,
        Err(reason) => {
            return support::skip(&format!("cannot build network namespaces: {reason}"));
        }
    };
    let children = (1..=4u8)
        .map(|i| {
            let child = MdnsChild {
                node: i,
                network: if i == 4 { "other-net" } else { "mdns-net" },
                expect: (1..=3).filter(|&j| j != i && i != 4).collect(),
                interface: "veth0",
            };
            (net.host_ns(usize::from(i)), child)
        })
        .collect();
    let results = run_mdns_children(children).await;
    assert_eq!(results.len(), 3);
    for (i, found) in results {
        for j in (1..=3u8).filter(|&j| j != i) {
            let wanted = (
                format!("{}:{}", net.addr(usize::from(j)), 4000 + u16::from(j))
                    .parse()
                    .unwrap(),
                node(j).to_string(),
            );
            assert!(
                found.contains(&wanted),
                "node {i} did not find node {j}: {found:?}"
            );
        }
        let other = node(4).to_string();
        assert!(
            found.iter().all(|(_, id)| *id != other),
            "node {i} took a node of another network: {found:?}"
        );
    }
}

/// Two processes in one namespace, both pinned to `lo` (the namespace also has a `veth0`):
/// they find each other on loopback only, so the pinning holds.
#[tokio::test]
async fn mdns_pinned_to_loopback_finds_a_neighbour_and_uses_no_other_interface() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    if let Some(reason) = support::netns::unavailable() {
        return support::skip(&reason);
    }
    let net = match support::netns::Network::up("lo", 1) {
        Ok(net) => net,
        Err(reason) => {
            return support::skip(&format!("cannot build network namespaces: {reason}"));
        }
    };
    let child = |node: u8, other: u8| {
        let c = MdnsChild {
            node,
            network: "lo-net",
            expect: vec![other],
            interface: "lo",
        };
        (net.host_ns(1), c)
    };
    let results = run_mdns_children(vec![child(1, 2), child(2, 1)]).await;
    for (i, found) in results {
        let other = if i == 1 { 2u8 } else { 1 };
        let wanted = (
            SocketAddr::from(([127, 0, 0, 1], 4000 + u16::from(other))),
            node(other).to_string(),
        );
        assert!(
            found.contains(&wanted),
            "node {i} did not find node {other}: {found:?}"
        );
        assert!(
            found.iter().all(|(a, _)| a.ip().is_loopback()),
            "node {i} saw a non-loopback address: {found:?}"
        );
    }
}

/// Not a test on its own: the body of one mDNS node of the namespace test above, run in a
/// namespace by `ip netns exec <this binary> mdns_namespace_child`. Without its environment
/// variable it does nothing.
#[tokio::test]
async fn mdns_namespace_child() {
    let Some(i) = std::env::var(CHILD_ENV)
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
    else {
        return;
    };
    let network = std::env::var("DISCOVERY_TEST_MDNS_NETWORK").unwrap();
    let expect: BTreeSet<NodeId> = std::env::var("DISCOVERY_TEST_MDNS_EXPECT")
        .unwrap()
        .split(',')
        .filter_map(|j| j.parse::<u8>().ok())
        .map(node)
        .collect();
    let interface = std::env::var("DISCOVERY_TEST_MDNS_IFACE").unwrap_or_else(|_| "veth0".into());
    let config = MdnsConfig {
        interfaces: vec![interface],
        reoffer_interval: Some(Duration::from_secs(1)),
    };
    let mdns = Mdns::new(config, node(i), network, 4000 + u16::from(i)).unwrap();
    assert_eq!(mdns.name(), "mdns");
    let (sink, mut rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let task = discovery::spawn(Box::new(mdns), sink, shutdown.clone());

    // A second mDNS strategy in the same process is refused (one daemon per process).
    let again = Mdns::new(MdnsConfig::parse("veth0"), node(99), "x", 1).unwrap();
    let (sink2, _rx2) = mpsc::channel(1);
    let second = discovery::spawn(Box::new(again), sink2, shutdown.clone())
        .await
        .unwrap();
    assert!(matches!(second, Err(Error::MdnsAlreadyRunning)));

    let mut missing = expect.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut linger: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || linger.is_some_and(|l| now > l) {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(c)) => {
                let id = c.node_id.map(|n| n.to_string()).unwrap_or_default();
                println!("FOUND {} {id}", c.addr);
                if let Some(n) = c.node_id {
                    missing.remove(&n);
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
        if missing.is_empty() && !expect.is_empty() && linger.is_none() {
            // Keep listening a moment, so a wrongly accepted node would show up.
            linger = Some(Instant::now() + Duration::from_secs(2));
        }
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(
        expect.is_empty() || missing.is_empty(),
        "node {i} never found {missing:?}"
    );
}
