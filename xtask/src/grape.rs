//! Grenache tooling: installs the Grape server and the Node.js grenache libraries with npm,
//! and runs two Grapes on loopback for the tests, as the seed's README does.
//!
//! The install lands in `<workspace>/.tools/grenache` (git-ignored). `grenache-nodejs-base`
//! names `@bitfinex/lib-js-util-base` by a git URL that cannot always be fetched, so the
//! `package.json` written here pins the registry copy with `overrides`.

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xshell::{Shell, cmd};

/// The npm packages installed, pinned to the versions checked against this project.
const PACKAGE_JSON: &str = r#"{
  "name": "p2p-exchange-grenache-tools",
  "private": true,
  "description": "Grape servers and grenache libraries for p2p-exchange tests (written by cargo xtask)",
  "dependencies": {
    "grenache-grape": "1.0.0",
    "grenache-nodejs-http": "1.0.2",
    "grenache-nodejs-link": "1.0.2"
  },
  "overrides": {
    "@bitfinex/lib-js-util-base": "2.1.0"
  }
}
"#;

/// The announcement lifetime given to every Grape (`--dpa`, milliseconds): announcements
/// expire, so a stopped node disappears from lookups. Announcers re-announce every 30 s.
pub(crate) const ANNOUNCE_LIFETIME_MS: u32 = 120_000;

/// How long a Grape may take to answer its API after it was started.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Installs `grenache-grape`, `grenache-nodejs-link` and `grenache-nodejs-http` into
/// `<workspace>/.tools/grenache` when any is missing, and returns that folder.
pub(crate) fn ensure_installed(sh: &Shell) -> Result<PathBuf> {
    let dir = crate::project_root().join(".tools").join("grenache");
    if is_installed(&dir) {
        return Ok(dir);
    }
    cmd!(sh, "npm --version")
        .quiet()
        .ignore_stdout()
        .run()
        .context("npm is needed to install the Grape server: install Node.js (with npm) first")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("package.json"), PACKAGE_JSON)
        .with_context(|| format!("writing {}/package.json", dir.display()))?;
    let _cwd = sh.push_dir(&dir);
    cmd!(sh, "npm install --no-audit --no-fund --loglevel=error")
        .run()
        .context("npm install of the grenache packages failed")?;
    if !is_installed(&dir) {
        bail!("npm install finished but {} is incomplete", dir.display());
    }
    Ok(dir)
}

fn is_installed(dir: &Path) -> bool {
    let modules = dir.join("node_modules");
    modules.join(".bin").join("grape").exists()
        && modules
            .join("grenache-nodejs-link")
            .join("package.json")
            .exists()
        && modules
            .join("grenache-nodejs-http")
            .join("package.json")
            .exists()
}

/// Two Grape processes bootstrapped off each other on loopback. Dropping it kills them.
pub(crate) struct Grapes {
    children: Vec<Child>,
    api_ports: (u16, u16),
}

impl Grapes {
    /// Starts, from the install in `dir`, the two Grapes of the seed's README:
    /// `grape --dp <dht.0> --aph <api.0> --bn 127.0.0.1:<dht.1>` and
    /// `grape --dp <dht.1> --aph <api.1> --bn 127.0.0.1:<dht.0>`, each bound to 127.0.0.1 and
    /// with an explicit `--dpa`, and waits until both APIs answer.
    pub(crate) fn start(
        dir: &Path,
        dht_ports: (u16, u16),
        api_ports: (u16, u16),
    ) -> Result<Grapes> {
        let grape = dir.join("node_modules").join(".bin").join("grape");
        if !grape.exists() {
            bail!("{} is missing: run ensure_installed first", grape.display());
        }
        // A Grape left running on these ports would answer in place of ours.
        for port in [api_ports.0, api_ports.1] {
            if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                bail!("port 127.0.0.1:{port} is in use: is a grape already running?");
            }
        }
        let mut grapes = Grapes {
            children: Vec::with_capacity(2),
            api_ports,
        };
        for (dht, api, other) in [
            (dht_ports.0, api_ports.0, dht_ports.1),
            (dht_ports.1, api_ports.1, dht_ports.0),
        ] {
            let log = std::fs::File::create(dir.join(format!("grape-{api}.log")))
                .context("creating the grape log file")?;
            let child = Command::new(&grape)
                .args(["--dp", &dht.to_string()])
                .args(["--aph", &api.to_string()])
                .args(["--bn", &format!("127.0.0.1:{other}")])
                .args(["--dpa", &ANNOUNCE_LIFETIME_MS.to_string()])
                .args(["-b", "127.0.0.1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", grape.display()))?;
            grapes.children.push(child);
        }
        grapes.wait_until_answering(dir)?;
        Ok(grapes)
    }

    fn wait_until_answering(&mut self, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        for port in [self.api_ports.0, self.api_ports.1] {
            loop {
                for child in &mut self.children {
                    if let Some(status) = child.try_wait()? {
                        bail!(
                            "a grape exited with {status} at start; see {}/grape-*.log",
                            dir.display()
                        );
                    }
                }
                if api_answers(port) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "the grape API on 127.0.0.1:{port} did not answer within {START_DEADLINE:?}"
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
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

/// Whether a Grape API answers a lookup on `port` (any HTTP answer counts).
fn api_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let body = r#"{"rid":"xtask-probe","data":"p2p-exchange/probe"}"#;
    let request = format!(
        "POST /lookup HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
}
