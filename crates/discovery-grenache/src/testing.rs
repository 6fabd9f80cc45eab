//! Test support (feature `testing`): real Grape servers for integration tests.
//!
//! [`Grapes`] starts two Grapes from the npm install that `cargo xtask test` makes in
//! `<workspace>/.tools/grenache` (or the folder [`grenache_dir`] names), on free
//! loopback ports, and kills them when dropped. [`skip`] implements the project's skip rule: a
//! test whose prerequisites are missing prints `SKIPPED: <reason>` and returns, unless
//! `P2P_EXCHANGE_REQUIRE_ALL=1`, where it fails instead.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The announcement lifetime (`--dpa`, ms) of test Grapes, as in `cargo xtask`.
pub const ANNOUNCE_LIFETIME_MS: u32 = 120_000;

/// Whether `P2P_EXCHANGE_REQUIRE_ALL=1` is set (tests must not skip).
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

/// The grenache npm install: `$P2P_EXCHANGE_GRENACHE_DIR`, else the parent of
/// `$GRENACHE_NODE_MODULES` (as `cargo xtask test` sets it), else
/// `<workspace>/.tools/grenache`.
pub fn grenache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("P2P_EXCHANGE_GRENACHE_DIR") {
        return PathBuf::from(dir);
    }
    let from_modules = std::env::var_os("GRENACHE_NODE_MODULES")
        .map(PathBuf::from)
        .and_then(|m| m.parent().map(Path::to_path_buf));
    match from_modules {
        Some(dir) => dir,
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("..")
            .join(".tools")
            .join("grenache"),
    }
}

/// The install folder when the Grape server, grenache-nodejs-link and grenache-nodejs-http are
/// installed, or the reason they cannot be used.
pub fn installed() -> Result<PathBuf, String> {
    let dir = grenache_dir();
    let modules = dir.join("node_modules");
    for needed in [
        modules.join(".bin").join("grape"),
        modules.join("grenache-nodejs-link").join("package.json"),
        modules.join("grenache-nodejs-http").join("package.json"),
    ] {
        if !needed.exists() {
            return Err(format!(
                "{} is missing (run `cargo xtask test`, which installs the grenache packages)",
                needed.display()
            ));
        }
    }
    if !node_available() {
        return Err("`node` is not on PATH".into());
    }
    Ok(dir)
}

/// Whether `node` runs.
pub fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two Grape processes bootstrapped off each other on loopback, as in the seed's README
/// (`grape --dp A --aph X --bn 127.0.0.1:B` and `grape --dp B --aph Y --bn 127.0.0.1:A`).
/// Dropping it kills both.
#[derive(Debug)]
pub struct Grapes {
    children: Vec<Child>,
    api_ports: [u16; 2],
}

impl Grapes {
    /// Starts two Grapes from the install in `dir` on free loopback ports and waits (bounded)
    /// until both APIs answer.
    pub fn start(dir: &Path) -> std::io::Result<Grapes> {
        let dht = [free_udp_port()?, free_udp_port()?];
        let api = [free_tcp_port()?, free_tcp_port()?];
        let grape = dir.join("node_modules").join(".bin").join("grape");
        let mut grapes = Grapes {
            children: Vec::with_capacity(2),
            api_ports: api,
        };
        for (i, other) in [(0, 1), (1, 0)] {
            let child = Command::new(&grape)
                .args(["--dp", &dht[i].to_string()])
                .args(["--aph", &api[i].to_string()])
                .args(["--bn", &format!("127.0.0.1:{}", dht[other])])
                .args(["--dpa", &ANNOUNCE_LIFETIME_MS.to_string()])
                .args(["-b", "127.0.0.1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            grapes.children.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in api {
            while !api_answers(port) {
                for child in &mut grapes.children {
                    if let Some(status) = child.try_wait()? {
                        return Err(std::io::Error::other(format!(
                            "a grape exited at start with {status}"
                        )));
                    }
                }
                if Instant::now() > deadline {
                    return Err(std::io::Error::other(format!(
                        "grape api on 127.0.0.1:{port} did not answer in time"
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(grapes)
    }

    /// The base URL of Grape `i` (0 or 1), e.g. `http://127.0.0.1:30001`.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.api_ports[i % 2])
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

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A UDP port that was free a moment ago (Grape's DHT binds all interfaces).
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?
        .local_addr()?
        .port())
}

fn api_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let body = r#"{"rid":"probe","data":"p2p-exchange/probe"}"#;
    let request = format!(
        "POST /lookup HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 "
}
