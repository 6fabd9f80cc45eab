//! Helpers shared by the workspace-level integration tests: real `p2p-exchange` processes on
//! 127.0.0.1, a small JSON client for their API, and waits with deadlines.
//!
//! The binary is taken from `P2P_EXCHANGE_BIN` when set (the test command builds it once and
//! sets it); otherwise it is built with `cargo build -p node-bin`.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The path of the `p2p-exchange` binary, built on first use when `P2P_EXCHANGE_BIN` is not set.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Ok(path) = std::env::var("P2P_EXCHANGE_BIN") {
            return PathBuf::from(path);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "node-bin", "--bin", "p2p-exchange"])
            .current_dir(root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build -p node-bin failed");
        root.join("target/debug/p2p-exchange")
    })
}

/// `count` consecutive free TCP ports on 127.0.0.1 (and their +5000 API ports).
pub fn free_port_block(count: u16) -> u16 {
    // Start from a pseudo-random base derived from the process id so parallel test binaries do
    // not race for the same block; verify every port by binding it.
    let mut base = 20_000 + (std::process::id() % 200) as u16 * 50;
    loop {
        let all_free = (0..count).all(|i| {
            TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && TcpListener::bind(("127.0.0.1", base + i + 5000)).is_ok()
        });
        if all_free {
            return base;
        }
        base += count + 7;
        if base > 29_000 {
            base = 15_000;
        }
    }
}

/// One node process. Killed (SIGKILL) on drop unless stopped before.
pub struct NodeProcess {
    child: Option<Child>,
    /// Its P2P port.
    pub p2p_port: u16,
    /// Its API address.
    pub api: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    log: PathBuf,
}

/// How to start one node process.
#[derive(Clone, Debug, Default)]
pub struct NodeSpec {
    /// P2P port (the API listens on this + 5000).
    pub p2p_port: u16,
    /// Data directory; `None` lets the node derive it from its port inside `cwd`.
    pub data_dir: Option<PathBuf>,
    /// Working directory of the process.
    pub cwd: PathBuf,
    /// `BOOTSTRAP_PEERS`.
    pub bootstrap: Vec<u16>,
    /// Found a new network at once.
    pub found: bool,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl NodeProcess {
    /// Starts a node with mDNS and Grenache off and logs written next to its data.
    pub fn start(spec: &NodeSpec) -> Result<NodeProcess> {
        let api: SocketAddr = ([127, 0, 0, 1], spec.p2p_port + 5000).into();
        let data_dir = spec
            .data_dir
            .clone()
            .unwrap_or_else(|| spec.cwd.join(format!("data/node-{}", spec.p2p_port)));
        let log = spec.cwd.join(format!("node-{}.log", spec.p2p_port));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut command = Command::new(binary());
        command
            .current_dir(&spec.cwd)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("P2P_HOST", "127.0.0.1")
            .env("P2P_PORT", spec.p2p_port.to_string())
            .env("DISCOVERY_MDNS", "false")
            .env("DISCOVERY_GRENACHE", "false")
            .env("JOIN_WINDOW_MS", "1500")
            .env("RUST_LOG", "info")
            .env("EXIT_WITH_PARENT", "1")
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file));
        if let Some(dir) = &spec.data_dir {
            command.env("DATA_DIR", dir);
        }
        if spec.found {
            command.env("FOUND", "true");
        }
        if !spec.bootstrap.is_empty() {
            let peers: Vec<String> = spec
                .bootstrap
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            command.env("BOOTSTRAP_PEERS", peers.join(","));
        }
        for (k, v) in &spec.env {
            command.env(k, v);
        }
        let child = command.spawn().context("spawning p2p-exchange")?;
        let node = NodeProcess {
            child: Some(child),
            p2p_port: spec.p2p_port,
            api,
            data_dir,
            log,
        };
        wait_for(Duration::from_secs(30), "the node's /health", || {
            Ok(http(node.api, "GET", "/health", None)?.0 == 200)
        })
        .with_context(|| {
            format!(
                "node on {} did not come up; log:\n{}",
                node.p2p_port,
                node.log_tail()
            )
        })?;
        Ok(node)
    }

    /// Kills the process with SIGKILL (a crash) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM and returns whether it exited successfully in time.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The last lines of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Value> {
        get_json(self.api, "/v1/status")
    }

    /// Places an order; returns the API's JSON answer (and fails on a non-201).
    pub fn place(&self, body: Value) -> Result<Value> {
        let (code, text) = http(self.api, "POST", "/v1/orders", Some(&body.to_string()))?;
        if code != 201 {
            bail!("POST /v1/orders answered {code}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A limit order body for `POST /v1/orders`.
pub fn limit(side: &str, price: &str, quantity: &str) -> Value {
    json!({"market": "BTC-USD", "side": side, "type": "limit", "price": price,
           "quantity": quantity, "time_in_force": "gtc"})
}

/// `GET path` as JSON, failing on a non-200.
pub fn get_json(api: SocketAddr, path: &str) -> Result<Value> {
    let (code, text) = http(api, "GET", path, None)?;
    if code != 200 {
        bail!("GET {path} answered {code}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// Polls `condition` every 50 ms until it returns `Ok(true)` or `timeout` passes; the last error
/// or "still false" is in the failure message.
pub fn wait_for(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition still false");
    while Instant::now() < deadline {
        match condition() {
            Ok(true) => return Ok(()),
            Ok(false) => last = "condition still false".into(),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}: {last}")
}

/// A plain blocking HTTP/1.1 request with `Connection: close`: status code and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = json.unwrap_or("");
    let content_type = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP status line")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if size == 0 || tail.len() < size {
                break;
            }
            out.push_str(&tail[..size]);
            rest = tail[size..].trim_start_matches("\r\n");
        }
        return Ok((code, out));
    }
    Ok((code, body.to_owned()))
}
