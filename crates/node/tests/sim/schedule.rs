//! Fault schedules: what the simulator does to the network, drawn from one seed.

use super::rng::Rng;

/// One simulated run: the cluster's shape, the engine parameters, the client load and the
/// faults, all fixed before the run starts (so a seed fully describes a run).
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The seed everything else was drawn from (links and clients draw from it too).
    pub seed: u64,
    /// Cluster size (node 0 founds the network, the others join it).
    pub nodes: usize,
    /// Majority eviction of silent members. Off by default: the engines run with
    /// `evict_after_ms = 0`, so a silent member stalls settlement everywhere until it is
    /// back. `true` (`SIM_EVICT=1`) sets `evict_after_ms` to 400 ms, below the longest
    /// partitions and crashes of a schedule: a majority side then evicts the minority and
    /// keeps settling, and the evicted nodes rejoin after the heal. Check 3 accepts
    /// `rejected` with a reason (the evicted side's unsettled orders) but still wants every
    /// acknowledged order on every node, and quiescence waits until every node is a member
    /// again.
    pub evict: bool,
    /// How one-way loss behaves. `false` (the default): like the TCP transport, which
    /// never drops a message on a live connection: `from -> to` traffic stalls (TCP
    /// retransmits) and arrives in order when the loss heals, and a loss longer than the
    /// transport's idle timeout closes the connection until it heals. `true`: messages are
    /// silently dropped while the connection stays up (a lossy link such as the Grenache
    /// RPC fallback), and nodes repeat their `NetworkInfo` on their links every 2 s, as the
    /// runtime does on RPC links. On in seeds `3k + 2`; `SIM_LOSSY=0/1` forces it.
    pub lossy: bool,
    /// Faults start with the nodes, while they found and join the network, rather than
    /// once it has formed. Off by default: the engine does not survive it yet (see the
    /// notes of issue 7); `SIM_JOIN_FAULTS=1` turns it on.
    pub join_under_faults: bool,
    /// The engines' heartbeat.
    pub heartbeat_ms: u64,
    /// The engines' frontier coalescing interval.
    pub frontier_min_interval_ms: u64,
    /// How long clients run and faults are injected, from the moment the network formed.
    pub load_ms: u64,
    /// Mean gap between two client actions.
    pub client_gap_ms: u64,
    /// Most orders the clients place.
    pub max_orders: usize,
    /// The faults, by start time relative to the end of network formation.
    pub faults: Vec<Timed>,
}

/// A fault and when it starts.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Start, in ms after the network formed.
    pub at_ms: u64,
    /// What happens.
    pub fault: Fault,
}

/// The kinds of fault.
#[derive(Debug, Clone)]
pub enum Fault {
    /// `kill -9`: the engine is dropped (only its persisted records survive) and restarted
    /// after `down_ms`. With `torn`, the crash hits the node's next loop iteration between
    /// computing its effects and the end of its fsync: a prefix of that iteration's records
    /// reaches the disk and nothing of it leaves the node.
    Crash {
        /// The node.
        node: usize,
        /// How long it stays down.
        down_ms: u64,
        /// Crash inside an iteration (mid-fsync) rather than between iterations.
        torn: bool,
    },
    /// The nodes of `side` are cut from all others (connections drop on both sides).
    Partition {
        /// One side of the split (the smaller one, or half).
        side: Vec<usize>,
        /// When it heals.
        heal_ms: u64,
    },
    /// Messages `from -> to` are lost (see [`Schedule::lossy`] for what that means); the
    /// other way works.
    OneWayLoss {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// When it heals.
        heal_ms: u64,
    },
    /// The connection `a - b` goes down for `down_ms`, up for `up_ms`, `flips` times.
    Flap {
        /// One end.
        a: usize,
        /// The other end.
        b: usize,
        /// Each outage.
        down_ms: u64,
        /// Between outages.
        up_ms: u64,
        /// How many outages.
        flips: u64,
    },
    /// Messages `from -> to` take `extra_ms` longer (FIFO is kept).
    DelaySpike {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// Added delay.
        extra_ms: u64,
        /// When it ends.
        heal_ms: u64,
    },
}

impl Schedule {
    /// A quiet schedule: `nodes` nodes, default parameters, no faults.
    pub fn quiet(seed: u64, nodes: usize) -> Schedule {
        Schedule {
            seed,
            nodes,
            evict: false,
            lossy: false,
            join_under_faults: false,
            heartbeat_ms: 150,
            frontier_min_interval_ms: 5,
            load_ms: 2000,
            client_gap_ms: 25,
            max_orders: 80,
            faults: Vec::new(),
        }
    }

    /// A random short schedule: 3 to 5 nodes, a few seconds, one to six faults.
    pub fn random(seed: u64) -> Schedule {
        let mut rng = Rng::new(seed ^ 0x5CED_u64.rotate_left(40));
        let nodes = rng.range(3, 5) as usize;
        let load_ms = rng.range(1500, 3000);
        let mut schedule = Schedule {
            seed,
            nodes,
            evict: false,
            lossy: false,
            join_under_faults: false,
            heartbeat_ms: rng.range(80, 250),
            frontier_min_interval_ms: [0, 5, 5, 20][rng.index(4)],
            load_ms,
            client_gap_ms: rng.range(10, 40),
            max_orders: rng.range(30, 100) as usize,
            faults: Vec::new(),
        };
        let count = rng.range(1, 6);
        for _ in 0..count {
            let at_ms = rng.below(load_ms * 4 / 5);
            let fault = match rng.below(5) {
                0 => Fault::Crash {
                    node: rng.index(nodes),
                    down_ms: rng.range(50, 800),
                    torn: rng.chance(50),
                },
                1 => {
                    let size = rng.range(1, nodes as u64 / 2) as usize;
                    let mut all: Vec<usize> = (0..nodes).collect();
                    let mut side = Vec::new();
                    for _ in 0..size {
                        side.push(all.remove(rng.index(all.len())));
                    }
                    side.sort_unstable();
                    Fault::Partition {
                        side,
                        heal_ms: rng.range(100, 1200),
                    }
                }
                2 => {
                    let (from, to) = pair(&mut rng, nodes);
                    Fault::OneWayLoss {
                        from,
                        to,
                        heal_ms: rng.range(100, 1200),
                    }
                }
                3 => {
                    let (a, b) = pair(&mut rng, nodes);
                    Fault::Flap {
                        a,
                        b,
                        down_ms: rng.range(10, 150),
                        up_ms: rng.range(10, 150),
                        flips: rng.range(2, 6),
                    }
                }
                _ => {
                    let (from, to) = pair(&mut rng, nodes);
                    Fault::DelaySpike {
                        from,
                        to,
                        extra_ms: rng.range(100, 300),
                        heal_ms: rng.range(100, 800),
                    }
                }
            };
            schedule.faults.push(Timed { at_ms, fault });
        }
        schedule.faults.sort_by_key(|t| t.at_ms);
        schedule
    }
}

/// Two distinct nodes.
fn pair(rng: &mut Rng, nodes: usize) -> (usize, usize) {
    let a = rng.index(nodes);
    let b = (a + 1 + rng.index(nodes - 1)) % nodes;
    (a, b)
}

/// How many faults of each kind a run injected (started before the final heal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// `kill -9` and restart.
    pub crashes: u64,
    /// Of which inside an iteration (mid-fsync).
    pub torn_crashes: u64,
    /// Minority/majority or even splits.
    pub partitions: u64,
    /// One-way message loss.
    pub one_way_losses: u64,
    /// Flapping links (each counts once, however many outages).
    pub flaps: u64,
    /// Scheduled delay spikes on a link (100-300 ms for a while).
    pub delay_spikes: u64,
    /// Single messages that took an extra 100-300 ms (the links' own occasional spikes).
    pub slow_messages: u64,
}

impl FaultCounts {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &FaultCounts) {
        self.crashes += other.crashes;
        self.torn_crashes += other.torn_crashes;
        self.partitions += other.partitions;
        self.one_way_losses += other.one_way_losses;
        self.flaps += other.flaps;
        self.delay_spikes += other.delay_spikes;
        self.slow_messages += other.slow_messages;
    }
}
