//! [`Mdns`]: advertise and browse `_p2p-exchange._tcp.local.` on chosen interfaces.

use crate::{BoxFuture, Candidate, Discovery, Error, Result, is_dialable, send_all};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use peer_protocol::{MAX_NETWORK_ID_LEN, NodeId};
use peer_storage::Source;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The DNS-SD service type every node advertises and browses.
pub const SERVICE_TYPE: &str = "_p2p-exchange._tcp.local.";
/// TXT key of the node id (64 hex characters).
pub const TXT_NODE_ID: &str = "node_id";
/// TXT key of the network id.
pub const TXT_NETWORK_ID: &str = "network_id";
/// The interface list entry that selects every interface.
pub const ALL_INTERFACES: &str = "all";
/// The most services remembered for re-offering.
const MAX_KNOWN: usize = 256;

/// Where mDNS runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MdnsConfig {
    /// Interface names (`lo`, `veth0`, `eth0`...), or [`ALL_INTERFACES`] for every interface.
    /// Must not be empty: mDNS only ever runs where it is explicitly asked to.
    pub interfaces: Vec<String>,
    /// Time between re-offers of every node found so far (so a node that was unreachable when
    /// found is dialed again).
    pub reoffer_interval: Option<Duration>,
}

impl MdnsConfig {
    /// A configuration from a comma-separated list such as `MDNS_INTERFACES` (`"lo"`,
    /// `"veth0,lo"`, `"all"`).
    pub fn parse(list: &str) -> Self {
        MdnsConfig {
            interfaces: list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            reoffer_interval: None,
        }
    }
}

/// Advertises this node (its id and network id in TXT records, its P2P port) and offers every
/// node of the same network found on the configured interfaces. Nodes of other networks, and
/// this node itself, are ignored.
///
/// One mDNS daemon serves the whole process, and one `Mdns` runs at a time in a process
/// ([`Error::MdnsAlreadyRunning`] otherwise): run one node per process when using mDNS.
#[derive(Clone, Debug)]
pub struct Mdns {
    config: MdnsConfig,
    node_id: NodeId,
    network_id: String,
    port: u16,
}

impl Mdns {
    /// An mDNS strategy advertising `node_id` of `network_id` on P2P `port`.
    pub fn new(
        config: MdnsConfig,
        node_id: NodeId,
        network_id: impl Into<String>,
        port: u16,
    ) -> Result<Mdns> {
        let network_id = network_id.into();
        let printable = network_id.bytes().all(|b| b.is_ascii_graphic());
        if network_id.is_empty() || network_id.len() > MAX_NETWORK_ID_LEN || !printable {
            return Err(Error::InvalidNetworkId(network_id));
        }
        if config.interfaces.is_empty() {
            return Err(Error::Mdns(format!(
                "no mdns interfaces configured: name them (e.g. lo) or use {ALL_INTERFACES:?}"
            )));
        }
        if port == 0 {
            return Err(Error::Mdns("cannot advertise port 0".into()));
        }
        Ok(Mdns {
            config,
            node_id,
            network_id,
            port,
        })
    }

    /// The candidates of one resolved service, given its TXT values and addresses: none unless
    /// it is of our network, carries a valid node id that is not ours, and advertises a port.
    pub fn accept(
        &self,
        network_id: Option<&str>,
        node_id: Option<&str>,
        port: u16,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Vec<Candidate> {
        if network_id != Some(self.network_id.as_str()) || port == 0 {
            return Vec::new();
        }
        let Some(node_id) = node_id.and_then(|id| id.parse::<NodeId>().ok()) else {
            return Vec::new();
        };
        if node_id == self.node_id {
            return Vec::new();
        }
        let mut out: Vec<Candidate> = Vec::new();
        for addr in addrs.into_iter().take(16) {
            if is_dialable(addr) && !out.iter().any(|c| c.addr == addr) {
                out.push(Candidate {
                    addr,
                    node_id: Some(node_id),
                    source: Source::Mdns,
                });
            }
        }
        out
    }

    fn accept_resolved(&self, service: &mdns_sd::ResolvedService) -> Vec<Candidate> {
        let port = service.get_port();
        let addrs = service
            .get_addresses()
            .iter()
            .map(|scoped| match scoped.to_ip_addr() {
                IpAddr::V4(v4) => SocketAddr::from((v4, port)),
                IpAddr::V6(v6) => {
                    let scope = match scoped {
                        mdns_sd::ScopedIp::V6(s) if v6.is_unicast_link_local() => {
                            s.scope_id().index
                        }
                        _ => 0,
                    };
                    SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope))
                }
            });
        self.accept(
            service.get_property_val_str(TXT_NETWORK_ID),
            service.get_property_val_str(TXT_NODE_ID),
            port,
            addrs.collect::<Vec<_>>(),
        )
    }
}

static DAEMON: Mutex<Option<ServiceDaemon>> = Mutex::new(None);
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Clears [`RUNNING`] when the running `Mdns` ends, however it ends.
struct RunningGuard;

impl Drop for RunningGuard {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

/// The process's mDNS daemon, created on first use, pinned to `interfaces`.
fn shared_daemon(interfaces: &[String]) -> Result<ServiceDaemon> {
    let mut slot = DAEMON
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let daemon = match slot.as_ref() {
        Some(daemon) => daemon.clone(),
        None => {
            let daemon = ServiceDaemon::new()?;
            *slot = Some(daemon.clone());
            daemon
        }
    };
    if interfaces.iter().any(|i| i == ALL_INTERFACES) {
        daemon.enable_interface(IfKind::All)?;
    } else {
        // Commands are handled in order, so nothing is sent on another interface before this
        // takes effect: browsing and registering come after.
        daemon.disable_interface(IfKind::All)?;
        daemon.enable_interface(
            interfaces
                .iter()
                .map(|i| IfKind::Name(i.clone()))
                .collect::<Vec<_>>(),
        )?;
    }
    Ok(daemon)
}

impl Discovery for Mdns {
    fn name(&self) -> &'static str {
        "mdns"
    }

    fn run(
        self: Box<Self>,
        sink: mpsc::Sender<Candidate>,
        shutdown: CancellationToken,
    ) -> BoxFuture<Result<()>> {
        Box::pin(async move {
            if RUNNING.swap(true, Ordering::SeqCst) {
                return Err(Error::MdnsAlreadyRunning);
            }
            let _running = RunningGuard;
            let daemon = shared_daemon(&self.config.interfaces)?;
            let id = self.node_id.to_string();
            let short = id.get(..16).unwrap_or(&id);
            let instance = format!("p2px-{short}-{}", self.port);
            let host = format!("p2px-{short}.local.");
            let properties = [
                (TXT_NODE_ID, id.as_str()),
                (TXT_NETWORK_ID, self.network_id.as_str()),
            ];
            let info = ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host,
                "",
                self.port,
                &properties[..],
            )?
            .enable_addr_auto();
            let fullname = info.get_fullname().to_owned();
            daemon.register(info)?;
            let events = daemon.browse(SERVICE_TYPE)?;
            tracing::info!(interfaces = ?self.config.interfaces, %instance, "mdns discovery running");

            let mut known: HashMap<String, Vec<Candidate>> = HashMap::new();
            let reoffer = self
                .config
                .reoffer_interval
                .unwrap_or(Duration::from_secs(30));
            let mut ticker = tokio::time::interval(reoffer);
            ticker.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticker.tick() => {
                        let all: Vec<Candidate> = known.values().flatten().cloned().collect();
                        if !send_all(&sink, all, &shutdown).await {
                            break;
                        }
                    }
                    event = events.recv_async() => match event {
                        Ok(ServiceEvent::ServiceResolved(service)) => {
                            let candidates = self.accept_resolved(&service);
                            if candidates.is_empty() {
                                continue;
                            }
                            tracing::debug!(service = %service.get_fullname(), ?candidates, "mdns found a node");
                            if known.len() < MAX_KNOWN || known.contains_key(service.get_fullname()) {
                                known.insert(service.get_fullname().to_owned(), candidates.clone());
                            }
                            if !send_all(&sink, candidates, &shutdown).await {
                                break;
                            }
                        }
                        Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                            known.remove(&fullname);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            tracing::warn!("the mdns daemon stopped browsing");
                            break;
                        }
                    },
                }
            }
            let _ = daemon.stop_browse(SERVICE_TYPE);
            if let Ok(done) = daemon.unregister(&fullname) {
                let _ = tokio::time::timeout(Duration::from_secs(1), done.recv_async()).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> NodeId {
        NodeId::from_bytes([byte; 32])
    }

    #[test]
    fn accepts_only_other_nodes_of_the_same_network() {
        let mdns = Mdns::new(MdnsConfig::parse("lo"), id(1), "net-a", 3000).unwrap();
        let addrs = || {
            vec![
                "10.99.0.2:3001".parse().unwrap(),
                "0.0.0.0:3001".parse().unwrap(),
            ]
        };
        let other = id(2).to_string();
        let found = mdns.accept(Some("net-a"), Some(&other), 3001, addrs());
        assert_eq!(
            found,
            vec![Candidate {
                addr: "10.99.0.2:3001".parse().unwrap(),
                node_id: Some(id(2)),
                source: Source::Mdns
            }]
        );
        assert!(
            mdns.accept(Some("net-b"), Some(&other), 3001, addrs())
                .is_empty()
        );
        assert!(mdns.accept(None, Some(&other), 3001, addrs()).is_empty());
        assert!(
            mdns.accept(Some("net-a"), Some(&id(1).to_string()), 3001, addrs())
                .is_empty()
        );
        assert!(
            mdns.accept(Some("net-a"), Some("not-hex"), 3001, addrs())
                .is_empty()
        );
        assert!(mdns.accept(Some("net-a"), None, 3001, addrs()).is_empty());
        assert!(
            mdns.accept(Some("net-a"), Some(&other), 0, addrs())
                .is_empty()
        );
    }

    #[test]
    fn refuses_unusable_settings() {
        assert!(matches!(
            Mdns::new(MdnsConfig::default(), id(1), "n", 1),
            Err(Error::Mdns(_))
        ));
        assert!(matches!(
            Mdns::new(MdnsConfig::parse("lo"), id(1), "", 1),
            Err(Error::InvalidNetworkId(_))
        ));
        assert!(matches!(
            Mdns::new(MdnsConfig::parse("lo"), id(1), "a b", 1),
            Err(Error::InvalidNetworkId(_))
        ));
        assert!(Mdns::new(MdnsConfig::parse("lo"), id(1), "n", 0).is_err());
        assert_eq!(
            MdnsConfig::parse(" veth0, lo ,").interfaces,
            ["veth0", "lo"]
        );
    }
}
