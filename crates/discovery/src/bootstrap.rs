//! [`Bootstrap`]: the configured `BOOTSTRAP_PEERS`.

use crate::{BoxFuture, Candidate, Discovery, Error, Result, is_dialable, pause, send_all};
use peer_storage::Source;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The most bootstrap entries accepted.
pub const MAX_ENTRIES: usize = 256;
/// The most addresses taken from one hostname.
pub const MAX_ADDRS_PER_HOST: usize = 8;
/// How long one hostname may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The bootstrap list: `host:port` entries, hostnames resolved, and re-resolved every
/// [`Bootstrap::interval`] (30 s by default, like `PEER_RECONNECT_INTERVAL`) so that a peer
/// that moved, or that was down at start, is offered again. A name that does not resolve is a
/// warning, never an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    entries: Vec<String>,
    interval: Duration,
}

impl Bootstrap {
    /// Parses a comma-separated list such as `BOOTSTRAP_PEERS`
    /// (`"10.0.0.1:3000, seed.example.com:3000, [::1]:3001"`); empty items are ignored.
    pub fn parse(list: &str) -> Result<Self> {
        Self::new(list.split(',').map(str::trim).filter(|e| !e.is_empty()))
    }

    /// A bootstrap list from `host:port` entries.
    pub fn new<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Result<Self> {
        let mut checked = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            validate(entry)?;
            if checked.len() == MAX_ENTRIES {
                return Err(Error::InvalidBootstrapPeer {
                    entry: entry.to_owned(),
                    reason: "too many bootstrap peers",
                });
            }
            if !checked.iter().any(|e| e == entry) {
                checked.push(entry.to_owned());
            }
        }
        Ok(Bootstrap {
            entries: checked,
            interval: Duration::from_secs(30),
        })
    }

    /// Sets how often the list is resolved and offered again.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The entries, as given.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Resolves every entry now, in order, each address once. Unresolvable names are logged and
    /// skipped.
    pub async fn resolve(&self) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = Vec::new();
        for entry in &self.entries {
            let addrs: Vec<SocketAddr> = match entry.parse::<SocketAddr>() {
                Ok(addr) => vec![addr],
                Err(_) => {
                    match tokio::time::timeout(
                        RESOLVE_TIMEOUT,
                        tokio::net::lookup_host(entry.as_str()),
                    )
                    .await
                    {
                        Ok(Ok(addrs)) => addrs.take(MAX_ADDRS_PER_HOST).collect(),
                        Ok(Err(error)) => {
                            tracing::warn!(%entry, %error, "cannot resolve bootstrap peer");
                            continue;
                        }
                        Err(_) => {
                            tracing::warn!(%entry, "resolving bootstrap peer timed out");
                            continue;
                        }
                    }
                }
            };
            for addr in addrs {
                if is_dialable(addr) && !out.iter().any(|c| c.addr == addr) {
                    out.push(Candidate {
                        addr,
                        node_id: None,
                        source: Source::Bootstrap,
                    });
                }
            }
        }
        out
    }
}

fn validate(entry: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidBootstrapPeer {
            entry: entry.to_owned(),
            reason,
        })
    };
    let Some((host, port)) = entry.rsplit_once(':') else {
        return bad("expected host:port");
    };
    match port.parse::<u16>() {
        Ok(0) => return bad("port 0"),
        Ok(_) => {}
        Err(_) => return bad("the port is not a number from 1 to 65535"),
    }
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if host.contains(':') && bracketed.is_none() {
        return bad("an IPv6 address must be written as [addr]:port");
    }
    let host = bracketed.unwrap_or(host);
    if host.is_empty() {
        return bad("empty host");
    }
    if host.len() > 253 {
        return bad("host name too long");
    }
    if bracketed.is_some() && host.parse::<std::net::Ipv6Addr>().is_err() {
        return bad("not an IPv6 address between brackets");
    }
    if host.parse::<std::net::IpAddr>().is_err()
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return bad("not a host name");
    }
    if let Ok(addr) = entry.parse::<SocketAddr>()
        && !is_dialable(addr)
    {
        return bad("not a dialable address (unspecified, multicast or broadcast)");
    }
    Ok(())
}

impl Discovery for Bootstrap {
    fn name(&self) -> &'static str {
        "bootstrap"
    }

    fn run(
        self: Box<Self>,
        sink: mpsc::Sender<Candidate>,
        shutdown: CancellationToken,
    ) -> BoxFuture<Result<()>> {
        Box::pin(async move {
            if self.entries.is_empty() {
                return Ok(());
            }
            loop {
                let candidates = tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    c = self.resolve() => c,
                };
                if !send_all(&sink, candidates, &shutdown).await
                    || !pause(self.interval, &shutdown).await
                {
                    return Ok(());
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates_entries() {
        let ok =
            Bootstrap::parse(" 127.0.0.1:3000, ,seed.example.com:3001,[::1]:3002,127.0.0.1:3000")
                .unwrap();
        assert_eq!(
            ok.entries(),
            ["127.0.0.1:3000", "seed.example.com:3001", "[::1]:3002"]
        );
        assert!(Bootstrap::parse("").unwrap().is_empty());
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "host:port",
            ":3000",
            "::1:3000",
            "0.0.0.0:3000",
            "224.0.0.251:5353",
            "bad host:3000",
            "a/b:3000",
        ] {
            assert!(
                matches!(
                    Bootstrap::parse(bad),
                    Err(Error::InvalidBootstrapPeer { .. })
                ),
                "{bad} was accepted"
            );
        }
    }
}
