//! End-to-end tests of the `p2p-exchange` binary: its `--help`, its client
//! subcommands against a scripted HTTP server, configuration errors, and a
//! real node process placing and reading back an order, then stopping
//! cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_p2p-exchange");

/// Every variable the binary reads, so tests start from a clean slate.
const VARS: &[&str] = &[
    "NETWORK_ID",
    "DATA_DIR",
    "P2P_HOST",
    "P2P_PORT",
    "API_HOST",
    "API_PORT",
    "BOOTSTRAP_PEERS",
    "MAX_PEERS",
    "PEER_RECONNECT_INTERVAL",
    "PEER_STORAGE_PATH",
    "DISCOVERY_MDNS",
    "MDNS_INTERFACES",
    "DISCOVERY_GRENACHE",
    "GRAPE_URL",
    "RPC_PORT",
    "MARKETS",
    "FOUND",
    "JOIN_WINDOW_MS",
    "HEARTBEAT_MS",
    "EVICT_AFTER_MS",
    "LOG_FORMAT",
    "RUST_LOG",
    "API_URL",
];

/// The binary with none of its variables inherited from the test's environment.
fn command() -> Command {
    let mut command = Command::new(BIN);
    for var in VARS {
        command.env_remove(var);
    }
    command
}

fn run(args: &[&str]) -> Output {
    command().args(args).output().expect("run p2p-exchange")
}

/// Runs `command` to completion, killing it (and failing) if it runs past
/// `limit`: for invocations that must fail fast rather than start a node.
fn output_within(mut command: Command, limit: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn p2p-exchange");
    let mut guard = ChildGuard(child);
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = read(
        guard
            .0
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read(
        guard
            .0
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after {limit:?}");
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_every_setting() {
    let output = run(&["--help"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let help = stdout(&output);
    let node_output = run(&["node", "--help"]);
    assert!(node_output.status.success());
    let node_help = stdout(&node_output);
    for var in &VARS[..VARS.len() - 1] {
        let flag = format!("--{}", var.to_lowercase().replace('_', "-"));
        for text in [&help, &node_help] {
            assert!(
                text.contains(&format!("env: {var}")),
                "{var} missing from help:\n{text}"
            );
            assert!(text.contains(&flag), "{flag} missing from help:\n{text}");
        }
    }
    for subcommand in [
        "node",
        "order",
        "cancel",
        "order-status",
        "book",
        "trades",
        "status",
        "peers",
    ] {
        assert!(help.contains(subcommand), "{subcommand} missing from help");
    }
}

#[test]
fn env_example_and_help_name_the_same_settings() {
    let example = include_str!("../../../.env.example");
    let help = stdout(&run(&["--help"]));
    let mut keys = Vec::new();
    for line in example.lines() {
        let assignment = line.trim().trim_start_matches("# ");
        if let Some((key, _)) = assignment.split_once('=')
            && !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            keys.push(key.to_owned());
        }
    }
    let mut expected: Vec<String> = VARS.iter().map(|v| (*v).to_owned()).collect();
    expected.sort();
    keys.sort();
    assert_eq!(keys, expected, ".env.example lists exactly the settings");
    for key in keys.iter().filter(|k| *k != "API_URL") {
        assert!(help.contains(&format!("env: {key}")), "{key} not in --help");
    }
    let order_help = stdout(&run(&["order", "--help"]));
    assert!(order_help.contains("API_URL"), "{order_help}");
}

#[test]
fn invalid_settings_fail_fast_with_a_clear_message() {
    for (var, value, expected) in [
        ("MARKETS", "BTC-USD", "NAME:TICK:LOT"),
        ("P2P_PORT", "abc", "p2p_port"),
        ("BOOTSTRAP_PEERS", "nohost", "host:port"),
        ("LOG_FORMAT", "xml", "neither text nor json"),
    ] {
        let mut node = command();
        node.env(var, value);
        let output = output_within(node, Duration::from_secs(30));
        assert!(!output.status.success(), "{var}={value} accepted");
        let text = stderr(&output);
        assert!(text.contains(expected), "{var}={value}: {text}");
    }
    let mut node = command();
    node.args(["--markets", "X:0:1"]);
    let flag = output_within(node, Duration::from_secs(30));
    assert!(!flag.status.success());
    assert!(
        stderr(&flag).contains("must be positive"),
        "{}",
        stderr(&flag)
    );
}

#[test]
fn log_format_json_writes_json_lines_and_start_errors_exit_non_zero() {
    // A data directory that is a regular file: the node cannot start, but
    // only after logging has been set up.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let mut node = command();
    node.env("DATA_DIR", file.path())
        .env("P2P_HOST", "127.0.0.1")
        .env("P2P_PORT", "0")
        .env("API_PORT", "0")
        .env("DISCOVERY_MDNS", "false")
        .env("DISCOVERY_GRENACHE", "false")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    let output = output_within(node, Duration::from_secs(30));
    assert!(!output.status.success());
    let text = stderr(&output);
    let first = text.lines().next().unwrap_or_default();
    let line: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["message"], "starting node", "{line}");
    assert!(text.contains("cannot start the node"), "{text}");
}

#[test]
fn a_dotenv_file_is_read_and_the_environment_and_flags_win_over_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join(".env"), "LOG_FORMAT=xml\n").expect("write .env");
    // A data directory that is a file makes a node fail right after its
    // settings load, so each run shows which layer won.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").expect("write file");
    let attempt = |env: &[(&str, &str)], args: &[&str]| {
        let mut node = command();
        node.current_dir(dir.path())
            .env("DATA_DIR", &blocker)
            .env("P2P_PORT", "0")
            .env("API_PORT", "0")
            .env("DISCOVERY_MDNS", "false")
            .env("DISCOVERY_GRENACHE", "false")
            .envs(env.iter().copied())
            .args(args);
        let output = output_within(node, Duration::from_secs(30));
        assert!(!output.status.success());
        stderr(&output)
    };
    let from_dotenv = attempt(&[], &[]);
    assert!(
        from_dotenv.contains("neither text nor json"),
        "{from_dotenv}"
    );
    let env_wins = attempt(&[("LOG_FORMAT", "text")], &[]);
    assert!(env_wins.contains("cannot start the node"), "{env_wins}");
    let flag_wins = attempt(&[], &["--log-format", "text"]);
    assert!(flag_wins.contains("cannot start the node"), "{flag_wins}");
    let missing = attempt(&[("LOG_FORMAT", "text")], &["--env-file", "missing.env"]);
    assert!(missing.contains("missing.env"), "{missing}");
}

/// Answers each connection with the next scripted response and records the
/// request lines it saw.
struct ScriptedServer {
    url: String,
    requests: mpsc::Receiver<String>,
}

impl ScriptedServer {
    fn start(responses: Vec<(u16, &'static str)>) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (sender, requests) = mpsc::sync_channel(16);
        thread::spawn(move || {
            for (status, body) in responses {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let request = answer(stream, status, body);
                if sender.send(request).is_err() {
                    return;
                }
            }
        });
        ScriptedServer { url, requests }
    }

    fn request(&self) -> String {
        self.requests
            .recv_timeout(Duration::from_secs(10))
            .expect("a request")
    }
}

/// Reads one request (head and body) and writes one response; returns the
/// request line and body.
fn answer(stream: TcpStream, status: u16, body: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).expect("request line");
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        let header = header.trim();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("content-length");
        }
    }
    let mut request_body = vec![0; length.min(64 * 1024)];
    reader.read_exact(&mut request_body).expect("body");
    let mut stream = reader.into_inner();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).expect("write");
    format!(
        "{} {}",
        request_line.trim(),
        String::from_utf8_lossy(&request_body)
    )
}

#[test]
fn client_subcommands_call_the_documented_routes_and_print_tables() {
    let server = ScriptedServer::start(vec![
        (201, r#"{"order_id":"ab12-1","status":"pending"}"#),
        (
            200,
            r#"{"bids":[["100.5","2"]],"asks":[["101","0.25"],["102","1"]]}"#,
        ),
        (
            200,
            r#"[{"trade_id":"t-1","price":"101","quantity":"0.25","maker_order_id":"m-1","taker_order_id":"ab12-1","taker_side":"buy"}]"#,
        ),
        (202, ""),
    ]);
    let api = server.url.as_str();

    let placed = run(&[
        "order",
        "buy",
        "BTC-USD",
        "0.5",
        "@",
        "100.5",
        "--client-order-id",
        "c-7",
        "--api",
        api,
    ]);
    assert!(placed.status.success(), "{}", stderr(&placed));
    let request = server.request();
    assert!(request.starts_with("POST /v1/orders HTTP/1.1"), "{request}");
    for field in [
        r#""market":"BTC-USD""#,
        r#""side":"buy""#,
        r#""type":"limit""#,
        r#""price":"100.5""#,
        r#""quantity":"0.5""#,
        r#""time_in_force":"gtc""#,
        r#""client_order_id":"c-7""#,
    ] {
        assert!(request.contains(field), "{field} missing from {request}");
    }
    let text = stdout(&placed);
    assert!(text.contains("order_id  ab12-1"), "{text}");
    assert!(text.contains("status    pending"), "{text}");

    let book = run(&["book", "BTC-USD", "--depth", "3", "--api", api]);
    assert!(book.status.success(), "{}", stderr(&book));
    let request = server.request();
    assert!(
        request.starts_with("GET /v1/markets/BTC-USD/book?depth=3 "),
        "{request}"
    );
    assert_eq!(
        stdout(&book),
        "BID QTY  BID PRICE  ASK PRICE  ASK QTY\n      2      100.5        101     0.25\n                          102        1\n"
    );

    let trades = run(&["trades", "BTC-USD", "--limit", "1", "--api", api]);
    assert!(trades.status.success(), "{}", stderr(&trades));
    let request = server.request();
    assert!(
        request.starts_with("GET /v1/markets/BTC-USD/trades?limit=1 "),
        "{request}"
    );
    let text = stdout(&trades);
    assert!(text.starts_with("TRADE_ID  PRICE  QUANTITY"), "{text}");
    assert!(text.contains("t-1"), "{text}");

    let cancel = command()
        .args(["cancel", "ab12-1", "--json"])
        .env("API_URL", api)
        .output()
        .expect("run");
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    let request = server.request();
    assert!(
        request.starts_with("DELETE /v1/orders/ab12-1 "),
        "{request}"
    );
}

#[test]
fn api_errors_print_the_server_message_and_exit_non_zero() {
    let server = ScriptedServer::start(vec![(
        400,
        r#"{"error":{"code":"invalid_price","message":"price 1.001 is not a multiple of the tick size 0.01"}}"#,
    )]);
    let output = run(&[
        "order",
        "sell",
        "BTC-USD",
        "1",
        "@",
        "1.001",
        "--api",
        &server.url,
    ]);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("price 1.001 is not a multiple of the tick size 0.01"),
        "{text}"
    );
    assert!(text.contains("invalid_price"), "{text}");
    assert!(server.request().contains(r#""type":"limit""#));
}

#[test]
fn an_unreachable_node_is_an_error() {
    let port = free_port();
    let output = run(&["status", "--api", &format!("http://127.0.0.1:{port}")]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot reach the node"),
        "{}",
        stderr(&output)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A child process killed when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` with a plain HTTP/1.1 request; the status code, if any answer.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = String::new();
    BufReader::new(stream).read_line(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// The value of a `FIELD  VALUE` row printed by the client.
fn field(table: &str, name: &str) -> Option<String> {
    table.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(name)).then(|| parts.collect::<Vec<_>>().join(" "))
    })
}

#[test]
fn a_node_process_serves_orders_and_stops_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
    let child = command()
        .env("DATA_DIR", data.path())
        .env("P2P_HOST", "127.0.0.1")
        .env("P2P_PORT", "0")
        .env("API_HOST", "127.0.0.1")
        .env("API_PORT", "0")
        .env("DISCOVERY_MDNS", "false")
        .env("DISCOVERY_GRENACHE", "false")
        .env("FOUND", "true")
        .env("JOIN_WINDOW_MS", "200")
        .env("HEARTBEAT_MS", "200")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let mut node = ChildGuard(child);
    let node_stdout = node.0.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::sync_channel(64);
    thread::spawn(move || {
        for line in BufReader::new(node_stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    // The node prints its API URL once its listeners are bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut printed = Vec::new();
    let api = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no API URL printed; stdout so far: {printed:?}"));
        if let Some(url) = line.strip_prefix("api:") {
            break url.trim().to_owned();
        }
        printed.push(line);
    };
    assert!(
        printed.iter().any(|l| l.starts_with("node id:")),
        "{printed:?}"
    );
    assert!(printed.iter().any(|l| l.starts_with("p2p:")), "{printed:?}");
    let addr: SocketAddr = api
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad API URL {api}"));

    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status(addr, "/health") != Some(200) {
        assert!(Instant::now() < deadline, "/health never answered 200");
        thread::sleep(Duration::from_millis(50));
    }

    let placed = run(&[
        "order",
        "buy",
        "BTC-USD",
        "0.5",
        "@",
        "100.25",
        "--client-order-id",
        "cli-test-1",
        "--api",
        &api,
    ]);
    assert!(placed.status.success(), "{}", stderr(&placed));
    let placed_text = stdout(&placed);
    let order_id = field(&placed_text, "order_id").expect("an order id");

    // A retry with the same client order id returns the same order.
    let retried = run(&[
        "order",
        "buy",
        "BTC-USD",
        "0.5",
        "@",
        "100.25",
        "--client-order-id",
        "cli-test-1",
        "--api",
        &api,
    ]);
    assert!(retried.status.success(), "{}", stderr(&retried));
    assert_eq!(field(&stdout(&retried), "order_id"), Some(order_id.clone()));

    // The order reads back; it settles on this single-member network.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = run(&["order-status", &order_id, "--api", &api]);
        assert!(status.status.success(), "{}", stderr(&status));
        let text = stdout(&status);
        assert_eq!(
            field(&text, "order_id").as_deref(),
            Some(order_id.as_str()),
            "{text}"
        );
        if field(&text, "status").as_deref() == Some("open") {
            break;
        }
        assert!(Instant::now() < deadline, "order never settled:\n{text}");
        thread::sleep(Duration::from_millis(50));
    }
    let book = run(&["book", "BTC-USD", "--api", &api]);
    assert!(book.status.success(), "{}", stderr(&book));
    assert!(stdout(&book).contains("100.25"), "{}", stdout(&book));
    let status = run(&["status", "--api", &api]);
    assert!(status.status.success(), "{}", stderr(&status));

    // SIGTERM: a graceful shutdown and exit code 0.
    let pid = node.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = node.0.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "node did not stop after SIGTERM");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "node exited with {exit}");
}
