//! Integration tests of `discovery-grenache` against two real Grape servers (started from the
//! npm install in `.tools/grenache`), plus the RPC server's handling of bad input.
//!
//! When the install or `node` is missing the Grape tests print `SKIPPED: <reason>` and pass,
//! unless `P2P_EXCHANGE_REQUIRE_ALL=1` (as `cargo xtask test` sets), where they fail.

use discovery_grenache::testing::{self, Grapes};
use discovery_grenache::{
    Announcer, AnnouncerConfig, Error, GrapeClient, RpcClient, RpcServer, RpcServerConfig, rpc,
};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Starts two Grapes, or skips the test (returns `None`).
fn grapes_or_skip() -> Option<Grapes> {
    let dir = match testing::installed() {
        Ok(dir) => dir,
        Err(reason) => {
            testing::skip(&reason);
            return None;
        }
    };
    match Grapes::start(&dir) {
        Ok(grapes) => Some(grapes),
        Err(e) => panic!("grape is installed but could not start: {e}"),
    }
}

/// Announces `name` on `port` through `announce_via` until a lookup through `lookup_via` finds
/// `127.0.0.1:port`, with a deadline.
async fn announce_until_found(
    announce_via: &GrapeClient,
    lookup_via: &GrapeClient,
    name: &str,
    port: u16,
) {
    let wanted: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let announced = announce_via.announce(name, port).await;
        let last = match lookup_via.lookup(name).await {
            Ok(found) if found.contains(&wanted) => return,
            Ok(found) => format!("announce: {announced:?}, lookup found {found:?}"),
            Err(e) => format!("announce: {announced:?}, lookup: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "{name} never found through the other grape; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn echo_server_handler() -> impl discovery_grenache::RpcHandler {
    |key: String, payload: Value| async move {
        match payload.get("action").and_then(Value::as_str) {
            Some("fail") => Err("boom".to_owned()),
            Some("panic") => panic!("handler panicked on purpose"),
            Some("slow") => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Value::Null)
            }
            _ => Ok(json!({ "key": key, "echo": payload })),
        }
    }
}

#[tokio::test]
async fn announce_then_lookup_finds_us_through_the_other_grape() {
    let Some(grapes) = grapes_or_skip() else {
        return;
    };
    let a = GrapeClient::new(&grapes.url(0)).unwrap();
    let b = GrapeClient::new(&grapes.url(1)).unwrap();
    announce_until_found(&a, &b, "p2p-exchange/test-net", 45_123).await;
    // A name nobody announced is an empty answer, not an error.
    let none = b
        .lookup("p2p-exchange/nobody-announced-this")
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test]
async fn the_announcer_keeps_a_service_findable_and_stops_on_shutdown() {
    let Some(grapes) = grapes_or_skip() else {
        return;
    };
    let a = GrapeClient::new(&grapes.url(0)).unwrap();
    let b = GrapeClient::new(&grapes.url(1)).unwrap();
    let shutdown = CancellationToken::new();
    let config = AnnouncerConfig {
        interval: Duration::from_millis(300),
        ..AnnouncerConfig::default()
    };
    let task = Announcer::new(a, "p2p-exchange/announcer-test", 45_124)
        .with_config(config)
        .spawn(shutdown.clone());
    let wanted: SocketAddr = ([127, 0, 0, 1], 45_124).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if b.lookup("p2p-exchange/announcer-test")
            .await
            .is_ok_and(|f| f.contains(&wanted))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the announcer's service never showed up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("announcer did not stop on shutdown")
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_grape_is_a_transient_error_and_never_fatal() {
    let port = testing::free_tcp_port().unwrap();
    let client =
        GrapeClient::with_timeout(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2))
            .unwrap();
    let err = client.lookup("p2p-exchange/x").await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(matches!(
        client.announce("p2p-exchange/x", 1).await,
        Err(Error::Unreachable { .. })
    ));

    // The announcer keeps retrying with backoff and stops cleanly on shutdown.
    let shutdown = CancellationToken::new();
    let task = Announcer::new(client, "p2p-exchange/x", 1).spawn(shutdown.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !task.is_finished(),
        "the announcer gave up on an unreachable grape"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_grape_error_string_is_an_error() {
    let Some(grapes) = grapes_or_skip() else {
        return;
    };
    let a = GrapeClient::new(&grapes.url(0)).unwrap();
    // Grape refuses an empty service name with an error string in a 200 answer.
    let err = a.lookup("").await.unwrap_err();
    assert!(
        matches!(&err, Error::Grape(m) if m == "ERR_GRAPE_LOOKUP"),
        "{err:?}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn our_rpc_server_answers_our_rpc_client_through_grape() {
    let Some(grapes) = grapes_or_skip() else {
        return;
    };
    let shutdown = CancellationToken::new();
    let server = RpcServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        echo_server_handler(),
        RpcServerConfig::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let service = "p2p-exchange-rpc/test-net";
    let a = GrapeClient::new(&grapes.url(0)).unwrap();
    let b = GrapeClient::new(&grapes.url(1)).unwrap();
    announce_until_found(&a, &b, service, server.local_addr().port()).await;

    let client = RpcClient::new(b);
    let reply = client
        .request(service, json!({"action": "ping"}), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(reply, json!({"key": service, "echo": {"action": "ping"}}));

    let err = client
        .request(service, json!({"action": "fail"}), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Remote(m) if m == "boom"), "{err:?}");

    let missing = client
        .request(
            "p2p-exchange-rpc/nobody",
            json!({}),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(matches!(missing, Error::ServiceNotFound(_)), "{missing:?}");

    shutdown.cancel();
    server.join().await.unwrap();
}

#[tokio::test]
async fn an_unmodified_nodejs_peer_rpc_client_calls_our_server_through_grape() {
    let Some(grapes) = grapes_or_skip() else {
        return;
    };
    let shutdown = CancellationToken::new();
    let server = RpcServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        echo_server_handler(),
        RpcServerConfig::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let service = "p2p-exchange-rpc/interop-net";
    let a = GrapeClient::new(&grapes.url(0)).unwrap();
    let b = GrapeClient::new(&grapes.url(1)).unwrap();
    announce_until_found(&a, &b, service, server.local_addr().port()).await;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interop.js");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .arg(grapes.url(1))
        .arg(service)
        .env("NODE_PATH", testing::grenache_dir().join("node_modules"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("node script hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node script failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        got,
        json!({"ok": {"key": service, "echo": {"action": "ping", "n": 42}}, "err": "boom"})
    );
    shutdown.cancel();
    server.join().await.unwrap();
}

#[tokio::test]
async fn the_rpc_server_answers_bad_input_with_errors_not_panics() {
    let shutdown = CancellationToken::new();
    let config = RpcServerConfig {
        max_body_bytes: 1024,
        handler_timeout: Duration::from_millis(300),
        ..RpcServerConfig::default()
    };
    let server = RpcServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        echo_server_handler(),
        config,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/", server.local_addr());
    let http = reqwest::Client::new();
    let post = |body: String| {
        let request = http.post(&url).body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let cases: &[(&str, u16, Value)] = &[
        ("not json", 400, json!([null, rpc::errors::PARSE, null])),
        ("{\"a\":1}", 400, json!([null, rpc::errors::PARSE, null])),
        ("[\"r\"]", 400, json!([null, rpc::errors::PARSE, null])),
        (
            "[\"r\",\"k\",1,2]",
            400,
            json!([null, rpc::errors::PARSE, null]),
        ),
        ("[\"r\",7,{}]", 400, json!(["r", rpc::errors::KEY, null])),
        (
            "[\"r\",\"k\",{\"action\":\"fail\"}]",
            200,
            json!(["r", "boom", null]),
        ),
        (
            "[\"r\",\"k\",{\"action\":\"panic\"}]",
            200,
            json!(["r", rpc::errors::HANDLER, null]),
        ),
        (
            "[\"r\",\"k\",{\"action\":\"slow\"}]",
            200,
            json!(["r", rpc::errors::TIMEOUT, null]),
        ),
        (
            "[\"r\",\"k\"]",
            200,
            json!(["r", null, {"key": "k", "echo": null}]),
        ),
    ];
    for (body, status, expected) in cases {
        let (got_status, text) = post((*body).to_owned()).await;
        assert_eq!(got_status, *status, "body {body}: {text}");
        let got: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(&got, expected, "body {body}");
    }
    let (status, _) = post(format!("[\"r\",\"k\",\"{}\"]", "x".repeat(2048))).await;
    assert_eq!(status, 413);

    // The server still serves after all that.
    let client = RpcClient::new(GrapeClient::new("http://127.0.0.1:1").unwrap());
    let reply = client
        .request_to(server.local_addr(), "k", json!(1), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply, json!({"key": "k", "echo": 1}));
    shutdown.cancel();
    server.join().await.unwrap();
}

#[tokio::test]
async fn our_rpc_client_calls_an_unmodified_nodejs_peer_rpc_server_through_grape() {
    let Some(grapes) = grapes_or_skip() else {
        return;
    };
    let service = "p2p-exchange-rpc/node-server";
    let port = testing::free_tcp_port().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/server.js");
    let mut server = tokio::process::Command::new("node")
        .arg(&script)
        .arg(grapes.url(0))
        .arg(service)
        .arg(port.to_string())
        .env("NODE_PATH", testing::grenache_dir().join("node_modules"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The Node.js server announces through Grape 0; we look it up through Grape 1.
    let client = RpcClient::new(GrapeClient::new(&grapes.url(1)).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        match client
            .request(service, json!({"action": "ping"}), Duration::from_secs(5))
            .await
        {
            Ok(reply) => break reply,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                assert!(
                    server.try_wait().unwrap().is_none(),
                    "the node server exited"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("calling the node server failed: {e}"),
        }
    };
    assert_eq!(
        reply,
        json!({"from": "node", "key": service, "payload": {"action": "ping"}})
    );
    let err = client
        .request(service, json!({"action": "fail"}), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Remote(m) if m == "nope"), "{err:?}");
    server.kill().await.unwrap();
}
