//! An isolated layer-2 network of network namespaces for mDNS tests (needs root and `ip`).
//!
//! `n` host namespaces `<prefix>-n<i>`, each with `veth0` = `10.99.<subnet>.<i>/24`, all joined to
//! a bridge `br0` that lives in its own namespace `<prefix>-br`. Nothing is routed out: no
//! default route, no address on the bridge, no link to the root namespace, so mDNS inside it
//! never reaches a real interface. Dropping the [`Network`] deletes every namespace.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A network of namespaces, removed on drop.
pub struct Network {
    prefix: String,
    hosts: usize,
}

/// Why the network cannot be built here (not root, no `ip`, no namespace support).
pub fn unavailable() -> Option<String> {
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
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !ip.is_ok_and(|s| s.success()) {
        return Some("the `ip` command (iproute2) is missing".into());
    }
    None
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Network {
    /// Builds a network of `hosts` namespaces (at most 20). The namespace names hold `name` and
    /// the process id, so concurrent tests and test runs do not collide.
    pub fn up(name: &str, hosts: usize) -> Result<Network, String> {
        assert!((1..=20).contains(&hosts));
        let prefix = format!("pdisc{}-{name}", std::process::id());
        let net = Network { prefix, hosts };
        // Anything left by a crashed run with the same pid goes first.
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
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 1..=hosts {
            loop {
                let out = Command::new("ip")
                    .args(["-n", &net.host_ns(i), "-o", "link", "show", "veth0"])
                    .output()
                    .map_err(|e| e.to_string())?;
                if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("veth0 of {} never came up", net.host_ns(i)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(net)
    }

    /// The namespace of host `i` (1-based).
    pub fn host_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// The IPv4 address of host `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("10.99.0.{i}")
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

impl Drop for Network {
    fn drop(&mut self) {
        self.remove();
    }
}
