//! Helpers shared by the workspace-level integration tests: real `p2p-exchange` processes on
//! 127.0.0.1, a small JSON client for their API, and waits with deadlines.
//!
//! For faults with real processes, [`Netns`] builds an isolated bridge of network namespaces
//! whose links can be cut one way or both ([`Netns::block`], [`Netns::partition`],
//! [`Netns::heal_all`]), and [`NsNode`] can be crashed, restarted on its data and paused
//! ([`NsNode::kill9`], [`NsNode::restart`], [`NsNode::pause`]).
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

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Makes [`binary`] (and so every node started by this crate) run `path`, e.g. a release build
/// made by an xtask; fails if [`binary`] was already used or set.
pub fn set_binary(path: PathBuf) -> Result<()> {
    BINARY
        .set(path)
        .map_err(|p| anyhow::anyhow!("the binary is already {}", p.display()))
}

/// `count` consecutive free TCP ports on 127.0.0.1 whose +5000 API ports are free too.
///
/// Blocks handed out within one test process never overlap (tests run in parallel threads);
/// different test processes start from different pid-derived bases, and every port is checked
/// by binding it.
pub fn free_port_block(count: u16) -> u16 {
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let mut base = next.unwrap_or(20_000 + (std::process::id() % 200) as u16 * 40);
    loop {
        if base + count > 29_000 {
            base = 15_000;
        }
        let all_free = (0..count).all(|i| {
            TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && TcpListener::bind(("127.0.0.1", base + i + 5000)).is_ok()
        });
        if all_free {
            *next = Some(base + count);
            return base;
        }
        base += count;
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

// ---- Discovery and Grenache end-to-end helpers ------------------------------------------

/// Whether `P2P_EXCHANGE_REQUIRE_ALL=1` is set: tests must run, never skip.
pub fn require_all() -> bool {
    std::env::var("P2P_EXCHANGE_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Skips the calling test: prints `SKIPPED: <reason>` to stderr, or panics when
/// [`require_all`] is set. The caller returns right after.
#[track_caller]
pub fn skip(reason: &str) {
    assert!(
        !require_all(),
        "P2P_EXCHANGE_REQUIRE_ALL=1 but this test cannot run: {reason}"
    );
    eprintln!("SKIPPED: {reason}");
}

/// The grenache npm install's `node_modules` (`$GRENACHE_NODE_MODULES`, else
/// `<workspace>/.tools/grenache/node_modules`) when the Grape server, grenache-nodejs-link,
/// grenache-nodejs-http and `node` are all there, or why not.
pub fn grenache_modules() -> std::result::Result<PathBuf, String> {
    let modules = std::env::var_os("GRENACHE_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/grenache/node_modules")
        });
    for needed in [
        modules.join(".bin/grape"),
        modules.join("grenache-nodejs-link/package.json"),
        modules.join("grenache-nodejs-http/package.json"),
    ] {
        if !needed.exists() {
            return Err(format!(
                "{} is missing (run `cargo xtask test`, which installs the grenache packages)",
                needed.display()
            ));
        }
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Err("`node` is not on PATH".into());
    }
    Ok(modules)
}

/// A port that was free on 127.0.0.1 (TCP) a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free tcp port")
}

/// Two real Grapes bootstrapped off each other, as in the seed's README
/// (`grape --dp A --aph X --bn <host>:B`), with `--dpa` so announcements expire. On loopback, or
/// one in each of two network namespaces. Killed on drop.
pub struct Grapes {
    children: Vec<Child>,
    urls: Vec<String>,
}

impl Grapes {
    /// Two Grapes on 127.0.0.1.
    pub fn start(modules: &Path) -> Result<Grapes> {
        let dht = [free_udp_port()?, free_udp_port()?];
        let api = [free_tcp_port(), free_tcp_port()];
        Grapes::spawn(modules, [None, None], ["127.0.0.1", "127.0.0.1"], dht, api)
    }

    /// Grape `i` runs in namespace `hosts[i].0`, bound to address `hosts[i].1`.
    pub fn start_in(modules: &Path, hosts: [(&str, &str); 2]) -> Result<Grapes> {
        Grapes::spawn(
            modules,
            [Some(hosts[0].0), Some(hosts[1].0)],
            [hosts[0].1, hosts[1].1],
            [20001, 20002],
            [30001, 30002],
        )
    }

    fn spawn(
        modules: &Path,
        namespaces: [Option<&str>; 2],
        hosts: [&str; 2],
        dht: [u16; 2],
        api: [u16; 2],
    ) -> Result<Grapes> {
        let grape = modules.join(".bin/grape");
        let mut grapes = Grapes {
            children: Vec::new(),
            urls: Vec::new(),
        };
        for (i, other) in [(0, 1), (1, 0)] {
            let mut command = match namespaces[i] {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns]).arg(&grape);
                    c
                }
                None => Command::new(&grape),
            };
            command
                .args(["--dp", &dht[i].to_string()])
                .args(["--aph", &api[i].to_string()])
                .args(["--bn", &format!("{}:{}", hosts[other], dht[other])])
                .args(["--dpa", "120000"])
                .args(["-b", hosts[i]])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            grapes
                .children
                .push(command.spawn().context("spawning a grape")?);
            grapes.urls.push(format!("http://{}:{}", hosts[i], api[i]));
        }
        let post = |i: usize, path: &str, body: &str| -> Result<(u16, String)> {
            let addr = grapes.urls[i].trim_start_matches("http://");
            match namespaces[i] {
                Some(ns) => ns_http(ns, addr, "POST", path, Some(body)),
                None => http(addr.parse()?, "POST", path, Some(body)),
            }
        };
        for i in 0..2 {
            let body = r#"{"rid":"probe","data":"p2p-exchange/probe"}"#;
            wait_for(Duration::from_secs(20), "a grape api", || {
                Ok(post(i, "/lookup", body)?.0 == 200)
            })?;
        }
        // Ready when the DHT works: what one Grape announces, the other finds (otherwise an
        // early announcement may reach no DHT node and stay invisible until re-announced).
        wait_for(
            Duration::from_secs(20),
            "the two grapes to share announcements",
            || {
                post(
                    0,
                    "/announce",
                    r#"{"rid":"probe","data":["p2p-exchange/ready",1]}"#,
                )?;
                let (_, found) = post(
                    1,
                    "/lookup",
                    r#"{"rid":"probe","data":"p2p-exchange/ready"}"#,
                )?;
                Ok(found.contains(":1\""))
            },
        )?;
        Ok(grapes)
    }

    /// The API URL of Grape `i` (0 or 1).
    pub fn url(&self, i: usize) -> &str {
        &self.urls[i % 2]
    }
}

impl Drop for Grapes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind(("0.0.0.0", 0))?
        .local_addr()?
        .port())
}

/// Why network namespaces cannot be used here (not root, no `ip`, no `curl`), if so.
pub fn netns_unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some("network namespaces need root".into());
    }
    for (tool, arg) in [("ip", "-V"), ("curl", "--version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("the `{tool}` command is missing"));
        }
    }
    None
}

/// Runs `ip <args>`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// An isolated layer-2 network of `n` namespaces `<prefix>-n<i>` (`veth0` = `10.98.0.<i>/24`)
/// joined by a bridge in its own namespace; nothing is routed out, so multicast never reaches
/// a real interface. Every namespace is deleted on drop.
pub struct Netns {
    prefix: String,
    hosts: usize,
}

impl Netns {
    /// Builds the network (at most 20 hosts); `name` keeps concurrent tests apart.
    pub fn up(name: &str, hosts: usize) -> Result<Netns> {
        assert!((1..=20).contains(&hosts));
        let net = Netns {
            prefix: format!("pxt{}-{name}", std::process::id()),
            hosts,
        };
        net.remove();
        let br = net.bridge_ns();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &br,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 1..=hosts {
            let ns = net.host_ns(i);
            let port = format!("p{i}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", "veth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                "veth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "veth0", "multicast", "on"])?;
            ip(&["-n", &ns, "link", "set", "veth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "veth0"])?;
        }
        for i in 1..=hosts {
            let ns = net.host_ns(i);
            wait_for(Duration::from_secs(10), "veth0 up", || {
                let out = Command::new("ip")
                    .args(["-n", &ns, "-o", "link", "show", "veth0"])
                    .output()?;
                Ok(String::from_utf8_lossy(&out.stdout).contains("state UP"))
            })?;
        }
        Ok(net)
    }

    /// The namespace of host `i` (1-based).
    pub fn host_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// The IPv4 address of host `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("10.98.0.{i}")
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    fn remove(&self) {
        for i in 1..=self.hosts {
            let _ = ip(&["netns", "del", &self.host_ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.bridge_ns()]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// An HTTP request made from inside namespace `ns` with curl: status code and body (10 s at
/// most).
pub fn ns_http(
    ns: &str,
    addr: &str,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Result<(u16, String)> {
    ns_http_timeout(ns, addr, method, path, json, Duration::from_secs(10))
}

/// A node process inside a network namespace (its API on 127.0.0.1 there, reached with
/// [`ns_http`]). Killed on drop.
pub struct NsNode {
    child: Option<Child>,
    /// Its namespace.
    pub ns: String,
    /// Its API address inside the namespace.
    pub api: String,
    log: PathBuf,
    /// What it was started with, for [`NsNode::restart`].
    dir: PathBuf,
    api_port: u16,
    env: Vec<(String, String)>,
}

impl NsNode {
    /// Starts the binary in `ns` with `DATA_DIR=<dir>/data`, the API on 127.0.0.1:`api_port`,
    /// and `env` (nothing else is inherited but `PATH`); waits for `/health`.
    pub fn start(ns: &str, dir: &Path, api_port: u16, env: &[(&str, String)]) -> Result<NsNode> {
        let mut node = NsNode {
            child: None,
            ns: ns.to_owned(),
            api: format!("127.0.0.1:{api_port}"),
            log: dir.join("node.log"),
            dir: dir.to_path_buf(),
            api_port,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        };
        node.spawn()?;
        Ok(node)
    }

    /// Starts the process (appending to its log) and waits for `/health`.
    fn spawn(&mut self) -> Result<()> {
        let (ns, dir, api_port) = (self.ns.as_str(), self.dir.as_path(), self.api_port);
        std::fs::create_dir_all(dir)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(absolute_binary())
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", dir.join("data"))
            .env("API_HOST", "127.0.0.1")
            .env("API_PORT", api_port.to_string())
            .env("RUST_LOG", "info")
            .env("EXIT_WITH_PARENT", "1")
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file));
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(
            command
                .spawn()
                .context("spawning p2p-exchange in a namespace")?,
        );
        wait_for(Duration::from_secs(30), "the node's /health", || {
            Ok(ns_http(&self.ns, &self.api, "GET", "/health", None)?.0 == 200)
        })
        .with_context(|| format!("node in {ns} did not come up; log:\n{}", self.log_tail()))?;
        Ok(())
    }

    /// `GET path` as JSON, failing on a non-200.
    pub fn get(&self, path: &str) -> Result<Value> {
        let (code, text) = ns_http(&self.ns, &self.api, "GET", path, None)?;
        if code != 200 {
            bail!("GET {path} answered {code}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Value> {
        self.get("/v1/status")
    }

    /// Places an order, failing on a non-201.
    pub fn place(&self, body: Value) -> Result<Value> {
        let (code, text) = ns_http(
            &self.ns,
            &self.api,
            "POST",
            "/v1/orders",
            Some(&body.to_string()),
        )?;
        if code != 201 {
            bail!("POST /v1/orders answered {code}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Fault injection on an [`NsNode`]: crashes, restarts and pauses of the real process.
impl NsNode {
    /// The process id of the node (`ip netns exec` execs the binary, so it is the node itself),
    /// while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process was started and has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process with SIGKILL (a crash) and reaps it; the data directory stays.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same data directory, API port and environment (after a
    /// crash, or killing a running one first), appending to its log; waits for `/health`.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> Result<()> {
        let pid = self.pid().context("the node is not running")?;
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {pid} failed");
        }
        Ok(())
    }
}

/// [`ns_http`] with a whole-request timeout instead of its 10 s (a paused node never
/// answers; clients under fault injection give up sooner).
pub fn ns_http_timeout(
    ns: &str,
    addr: &str,
    method: &str,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns, "curl", "-sS", "-X", method])
        .arg("--max-time")
        .arg(format!("{:.3}", timeout.as_secs_f64()))
        .args(["-w", "\n%{http_code}"]);
    if let Some(body) = json {
        command
            .args(["-H", "content-type: application/json"])
            .args(["--data-binary", body]);
    }
    let out = command
        .arg(format!("http://{addr}{path}"))
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

/// Many `GET`s from inside namespace `ns` over one kept-alive connection (one curl process):
/// the status code and body of each path, in order; code 0 where a request failed. `timeout`
/// bounds each request.
pub fn ns_http_many(
    ns: &str,
    addr: &str,
    paths: &[String],
    timeout: Duration,
) -> Result<Vec<(u16, String)>> {
    const MARK: &str = "\n@@p2p-exchange-status ";
    let mut out = Vec::with_capacity(paths.len());
    // Bounded argument lists: a few hundred URLs per curl.
    for chunk in paths.chunks(200) {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, "curl", "-sS", "--max-time"])
            .arg(format!("{:.3}", timeout.as_secs_f64()))
            .args(["-w", &format!("{MARK}%{{http_code}}\n")]);
        for path in chunk {
            command.arg(format!("http://{addr}{path}"));
        }
        let output = command.output().context("running curl")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut rest: &str = &text;
        for _ in chunk {
            let (body, tail) = rest
                .split_once(MARK)
                .context("curl printed fewer answers than requests")?;
            let (code, tail) = tail.split_once('\n').unwrap_or((tail, ""));
            out.push((code.trim().parse().unwrap_or(0), body.to_owned()));
            rest = tail;
        }
    }
    Ok(out)
}

/// Fault injection on a [`Netns`] network: links are cut with blackhole routes inside the
/// namespaces (this kernel has no `netem`; nftables may be missing).
impl Netns {
    /// Drops every packet host `from` sends to host `to` (one-way loss; both directions make
    /// a cut link). Fails if it is already blocked.
    pub fn block(&self, from: usize, to: usize) -> Result<()> {
        let target = format!("{}/32", self.addr(to));
        ip(&[
            "-n",
            &self.host_ns(from),
            "route",
            "add",
            "blackhole",
            &target,
        ])
    }

    /// Undoes [`Netns::block`]. Fails if it was not blocked.
    pub fn unblock(&self, from: usize, to: usize) -> Result<()> {
        let target = format!("{}/32", self.addr(to));
        ip(&[
            "-n",
            &self.host_ns(from),
            "route",
            "del",
            "blackhole",
            &target,
        ])
    }

    /// Cuts every link between side `a` and side `b`, both ways.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<()> {
        for &i in a {
            for &j in b {
                self.block(i, j)?;
                self.block(j, i)?;
            }
        }
        Ok(())
    }

    /// Removes every blocked link of every host.
    pub fn heal_all(&self) -> Result<()> {
        for i in 1..=self.hosts {
            ip(&[
                "-n",
                &self.host_ns(i),
                "route",
                "flush",
                "type",
                "blackhole",
            ])?;
        }
        Ok(())
    }

    /// The number of hosts.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// The prefix of every namespace name of this network (`pxt<pid>-<name>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// [`binary`] as an absolute path (a relative `P2P_EXCHANGE_BIN` is taken from the current
/// directory, else from the workspace root), for processes started in another directory.
pub fn absolute_binary() -> PathBuf {
    let path = binary();
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [std::env::current_dir().unwrap_or_default(), root]
        .iter()
        .map(|dir| dir.join(path))
        .find(|p| p.exists())
        .and_then(|p| p.canonicalize().ok())
        .unwrap_or_else(|| path.to_path_buf())
}
