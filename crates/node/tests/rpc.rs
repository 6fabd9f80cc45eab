//! The Grenache RPC endpoint of the hybrid mode, in-process (feature `grenache`): the client
//! actions answer what the HTTP API answers, errors come back in the error slot, and a
//! `deliver` envelope that is not signed by a member is refused. The Grape is unreachable
//! here (a warning, never fatal); the end-to-end tests in `tests/` use real Grapes.
#![cfg(feature = "grenache")]

use std::time::Duration;

use discovery::discovery_grenache::{Error as GrenacheError, GrapeClient, RpcClient};
use node::{Config, Node};
use serde_json::{Value, json};

#[tokio::test]
async fn rpc_actions_mirror_the_http_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        network_id: "rpc-test".to_owned(),
        data_dir: Some(dir.path().to_path_buf()),
        p2p_host: "127.0.0.1".to_owned(),
        p2p_port: 0,
        api_port: Some(0),
        rpc_port: Some(0),
        discovery_mdns: false,
        discovery_grenache: true,
        // Nothing listens there: announcing fails with a warning and the node runs on.
        grape_url: "http://127.0.0.1:9".to_owned(),
        found: true,
        ..Config::default()
    };
    let node = Node::start(config).await.expect("node starts");
    let rpc = node.rpc_addr().expect("the rpc endpoint runs");
    let handle = node.handle();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while handle
        .status()
        .await
        .expect("status")
        .engine
        .members
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "never became a member"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let client = RpcClient::new(GrapeClient::new("http://127.0.0.1:9").expect("url"));
    let call = |payload: Value| {
        let client = &client;
        async move {
            client
                .request_to(
                    rpc,
                    "p2p-exchange-rpc/rpc-test",
                    payload,
                    Duration::from_secs(5),
                )
                .await
        }
    };
    let remote = |result: Result<Value, GrenacheError>| match result {
        Err(GrenacheError::Remote(message)) => message,
        other => panic!("expected an error reply, got {other:?}"),
    };

    let status = call(json!({"action": "status"})).await.expect("status");
    assert_eq!(status["node_id"], node.node_id().to_string());
    assert_eq!(status["rpc_addr"], rpc.to_string());

    let placed = call(
        json!({"action": "place", "market": "BTC-USD", "side": "sell",
        "type": "limit", "price": "100.50", "quantity": "2", "time_in_force": "gtc",
        "client_order_id": "rpc-1"}),
    )
    .await
    .expect("place");
    assert_eq!(placed["client_order_id"], "rpc-1");
    assert_eq!(
        placed["status"], "open",
        "a lone founder settles at once: {placed}"
    );
    // Retrying with the same client order id returns the same order.
    let again = call(
        json!({"action": "place", "market": "BTC-USD", "side": "sell",
        "type": "limit", "price": "100.50", "quantity": "2", "client_order_id": "rpc-1"}),
    )
    .await
    .expect("retry");
    assert_eq!(again["order_id"], placed["order_id"]);

    let book = call(json!({"action": "book", "market": "BTC-USD"}))
        .await
        .expect("book");
    assert_eq!(
        book,
        json!({"market": "BTC-USD", "bids": [], "asks": [["100.50", "2.0000"]]})
    );
    let trades = call(json!({"action": "trades", "market": "BTC-USD", "limit": 5}))
        .await
        .expect("trades");
    assert_eq!(trades, json!([]));

    for (payload, code) in [
        (
            json!({"action": "book", "market": "NOPE-USD"}),
            "unknown_market",
        ),
        (json!({"action": "trades"}), "invalid_payload"),
        (
            json!({"action": "place", "market": "BTC-USD", "side": "up", "price": "1",
                "quantity": "1"}),
            "invalid_side",
        ),
        (
            json!({"action": "place", "market": "BTC-USD", "side": "buy", "price": "1",
                "quantity": "1", "extra": true}),
            "invalid_json",
        ),
        (
            json!({"action": "place", "market": "BTC-USD", "side": "buy", "price": "1.001",
                "quantity": "1"}),
            "off_tick",
        ),
        (json!({"action": "fly"}), "unknown_action"),
        (json!(["not", "an", "object"]), "invalid_payload"),
        (
            json!({"action": "deliver", "from": "00", "messages": []}),
            "invalid_envelope",
        ),
    ] {
        let message = remote(call(payload.clone()).await);
        assert!(
            message.starts_with(code),
            "{payload} answered {message:?}, expected {code}"
        );
    }
    node.shutdown().await.expect("shutdown");
}
