//! [`GrapeClient`]: the HTTP API of a Grape server (`/announce`, `/lookup`).

use crate::{Error, Result};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The most bytes we read of any answer from a Grape or an RPC peer.
///
/// A Grape's lookup answers at most 100 `"ip:port"` strings (a few KiB); anything larger is a
/// broken or hostile server and is cut off rather than buffered.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The answer Grape (bittorrent-dht's k-rpc, really) gives while its DHT knows no other node.
const NO_NODES_TO_QUERY: &str = "No nodes to query";

/// The default timeout of one request to a Grape.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one Grape's HTTP API.
///
/// Every request is a `POST {base}/{type}` with the JSON body `{"rid": "<uuid>", "data": ...}`,
/// as grenache-nodejs-link sends it. Grape reports errors as HTTP 200 with a JSON *string*
/// body, so any string answer is turned into an [`Error`]. Cloning is cheap (the connection
/// pool is shared).
#[derive(Clone, Debug)]
pub struct GrapeClient {
    http: reqwest::Client,
    base_url: String,
}

impl GrapeClient {
    /// A client of the Grape whose API is at `base_url` (e.g. `http://127.0.0.1:30001`), with
    /// the [`DEFAULT_TIMEOUT`] per request.
    pub fn new(base_url: &str) -> Result<Self> {
        Self::with_timeout(base_url, DEFAULT_TIMEOUT)
    }

    /// Like [`GrapeClient::new`] with a timeout per request.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self> {
        let trimmed = base_url.trim().trim_end_matches('/');
        let rest = trimmed
            .strip_prefix("http://")
            .ok_or_else(|| Error::InvalidUrl(base_url.to_owned()))?;
        if rest.is_empty() || rest.contains('/') {
            return Err(Error::InvalidUrl(base_url.to_owned()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|_| Error::InvalidUrl(base_url.to_owned()))?;
        Ok(GrapeClient {
            http,
            base_url: trimmed.to_owned(),
        })
    }

    /// The Grape's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Announces that the service `name` is served on `port` of this host.
    ///
    /// The Grape records the address it sees the announcement come from (over its DHT), so the
    /// host is not sent. Announcements expire (Grape's `--dpa`); announce again well before,
    /// or let an [`Announcer`](crate::Announcer) do it.
    pub async fn announce(&self, name: &str, port: u16) -> Result<()> {
        let answer = self.post("announce", json!([name, port])).await?;
        match answer {
            // Grape answers the number of DHT nodes it announced to.
            Value::Number(_) | Value::Null => Ok(()),
            other => Err(Error::InvalidResponse(format!(
                "announce answered {}",
                shorten(&other.to_string())
            ))),
        }
    }

    /// The addresses announced under `name`, as the Grape's DHT knows them.
    ///
    /// An empty list is a valid answer (nobody announced yet). Entries that are not
    /// `ip:port` are skipped with a warning, never trusted.
    pub async fn lookup(&self, name: &str) -> Result<Vec<SocketAddr>> {
        let answer = self.post("lookup", Value::String(name.to_owned())).await?;
        let Value::Array(entries) = answer else {
            return Err(Error::InvalidResponse(format!(
                "lookup answered {}",
                shorten(&answer.to_string())
            )));
        };
        let mut addrs = Vec::with_capacity(entries.len().min(128));
        for entry in entries {
            match entry.as_str().and_then(parse_peer) {
                Some(addr) if !addrs.contains(&addr) => addrs.push(addr),
                Some(_) => {}
                None => tracing::warn!(
                    grape = %self.base_url,
                    entry = %shorten(&entry.to_string()),
                    "skipping a lookup entry that is not ip:port"
                ),
            }
        }
        Ok(addrs)
    }

    /// Posts `{"rid", "data"}` to `/{kind}` and returns the decoded answer, with Grape's string
    /// errors already turned into [`Error`]s.
    async fn post(&self, kind: &str, data: Value) -> Result<Value> {
        let url = format!("{}/{kind}", self.base_url);
        let body = json!({ "rid": uuid::Uuid::new_v4().to_string(), "data": data });
        let unreachable = |source| Error::Unreachable {
            url: self.base_url.clone(),
            source,
        };
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let bytes = read_bounded(response).await.map_err(|e| match e {
            ReadError::Http(source) => unreachable(source),
            ReadError::TooLarge => Error::InvalidResponse("answer too large".into()),
        })?;
        let text = String::from_utf8_lossy(&bytes);
        if !status.is_success() {
            return Err(Error::HttpStatus {
                status: status.as_u16(),
                body: shorten(&text),
            });
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|_| Error::InvalidResponse(format!("not json: {}", shorten(&text))))?;
        match value {
            Value::String(message) if message == NO_NODES_TO_QUERY => Err(Error::NoNodesToQuery),
            Value::String(message) => Err(Error::Grape(shorten(&message))),
            other => Ok(other),
        }
    }
}

/// Parses one `"ip:port"` entry of a lookup answer. Grape formats IPv6 hosts without brackets,
/// so the port is whatever follows the last colon.
pub(crate) fn parse_peer(entry: &str) -> Option<SocketAddr> {
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return valid(addr);
    }
    let (host, port) = entry.rsplit_once(':')?;
    let ip: IpAddr = host.parse().ok()?;
    valid(SocketAddr::new(ip, port.parse().ok()?))
}

fn valid(addr: SocketAddr) -> Option<SocketAddr> {
    (addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast()).then_some(addr)
}

pub(crate) enum ReadError {
    Http(reqwest::Error),
    TooLarge,
}

/// Reads a body chunk by chunk, refusing more than [`MAX_RESPONSE_BYTES`]: a peer's
/// `content-length` never sizes an allocation.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
) -> std::result::Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// At most 200 characters of `text`, for error messages and logs.
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lookup_entries() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1:3000", Some("127.0.0.1:3000")),
            ("10.0.0.7:65535", Some("10.0.0.7:65535")),
            ("::1:3000", Some("[::1]:3000")),
            ("[::1]:3000", Some("[::1]:3000")),
            ("127.0.0.1:0", None),
            ("0.0.0.0:3000", None),
            ("224.0.0.251:5353", None),
            ("127.0.0.1:70000", None),
            ("localhost:3000", None),
            ("127.0.0.1", None),
            ("", None),
        ];
        for (entry, expected) in cases {
            let expected = expected.map(|e| e.parse::<SocketAddr>().unwrap());
            assert_eq!(parse_peer(entry), expected, "entry {entry:?}");
        }
    }

    #[test]
    fn rejects_urls_that_are_not_plain_http() {
        assert!(GrapeClient::new("http://127.0.0.1:30001").is_ok());
        assert_eq!(
            GrapeClient::new("http://127.0.0.1:30001/")
                .unwrap()
                .base_url(),
            "http://127.0.0.1:30001"
        );
        for bad in [
            "127.0.0.1:30001",
            "https://x:1",
            "http://",
            "http://a:1/path",
            "",
        ] {
            assert!(
                matches!(GrapeClient::new(bad), Err(Error::InvalidUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn shortens_long_text_on_a_char_boundary() {
        let long = "é".repeat(300);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), 203);
        assert_eq!(shorten("abc"), "abc");
    }
}
