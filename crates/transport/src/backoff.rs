//! Redial scheduling for one known address: exponential backoff with jitter and a
//! circuit breaker. Pure: time and randomness are passed in, so tests drive it.

use std::time::{Duration, Instant};

/// The circuit breaker's state for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Normal: dial whenever the backoff allows.
    Closed,
    /// Too many consecutive failures: no dial before `until`.
    Open {
        /// When the breaker lets one probe through.
        until: Instant,
    },
    /// One probe is allowed; its success closes the breaker, its failure reopens it.
    HalfOpen,
}

/// Backoff and breaker parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub initial: Duration,
    pub max: Duration,
    pub threshold: u32,
    pub cooldown: Duration,
    /// After losing an established connection, for this long...
    pub fast_window: Duration,
    /// ...the backoff is capped at this and the breaker stays closed.
    pub fast_max: Duration,
}

/// When to dial one address next.
#[derive(Debug, Clone)]
pub(crate) struct Redial {
    delay: Duration,
    next_attempt: Instant,
    failures: u32,
    breaker: BreakerState,
    /// Until when a lost peer is redialled fast (see [`Policy::fast_window`]).
    fast_until: Option<Instant>,
}

impl Redial {
    /// A fresh address: dial at once.
    pub fn new(policy: &Policy, now: Instant) -> Self {
        Self {
            delay: policy.initial,
            next_attempt: now,
            failures: 0,
            breaker: BreakerState::Closed,
            fast_until: None,
        }
    }

    /// Whether a dial may start now. Moves an expired open breaker to half-open.
    pub fn ready(&mut self, now: Instant) -> bool {
        if let BreakerState::Open { until } = self.breaker {
            if now < until {
                return false;
            }
            self.breaker = BreakerState::HalfOpen;
        }
        now >= self.next_attempt
    }

    /// A dial failed. `jitter` in `[0, 1]` picks the wait inside `[delay/2, delay]`.
    pub fn on_failure(&mut self, policy: &Policy, now: Instant, jitter: f64) {
        self.failures = self.failures.saturating_add(1);
        // A peer we were just connected to is probably restarting: keep probing it
        // about every second for a while instead of backing off to minutes.
        let fast = self.fast_until.is_some_and(|until| now < until);
        let max = if fast {
            policy.max.min(policy.fast_max)
        } else {
            policy.max
        };
        let reopen =
            !fast && (self.breaker == BreakerState::HalfOpen || self.failures >= policy.threshold);
        self.delay = self.delay.min(max);
        self.next_attempt = now + jittered(self.delay, jitter);
        self.delay = self.delay.saturating_mul(2).min(max);
        if reopen {
            self.breaker = BreakerState::Open {
                until: now + policy.cooldown,
            };
        }
    }

    /// A dial succeeded: the breaker closes and the backoff starts over.
    pub fn on_success(&mut self, policy: &Policy) {
        self.failures = 0;
        self.breaker = BreakerState::Closed;
        self.delay = policy.initial;
    }

    /// An established connection ended: redial soon, starting the backoff over, so a
    /// restarted peer is back within about `initial` after it listens again.
    pub fn on_disconnected(&mut self, policy: &Policy, now: Instant, jitter: f64) {
        self.on_success(policy);
        self.next_attempt = now + jittered(policy.initial, jitter);
        self.fast_until = Some(now + policy.fast_window);
    }

    /// The breaker's state.
    pub fn breaker(&self) -> BreakerState {
        self.breaker
    }

    /// Consecutive failed dials.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The earliest moment a dial may start.
    #[cfg(test)]
    pub fn next_attempt(&self) -> Instant {
        match self.breaker {
            BreakerState::Open { until } => until.max(self.next_attempt),
            _ => self.next_attempt,
        }
    }
}

/// "Equal jitter": half the delay fixed, half random, so retries spread out but never
/// collapse to zero.
fn jittered(delay: Duration, jitter: f64) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        1.0
    };
    delay / 2 + delay.mul_f64(jitter) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> Policy {
        Policy {
            initial: 100 * MS,
            max: 1000 * MS,
            threshold: 4,
            cooldown: 5000 * MS,
            fast_window: 60_000 * MS,
            fast_max: 300 * MS,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_inside_the_window() {
        let p = policy();
        let t0 = Instant::now();
        let mut r = Redial::new(&p, t0);
        assert!(r.ready(t0));
        // Full jitter (1.0) waits the whole delay; none (0.0) waits half of it.
        let expected = [(1.0, 100), (0.0, 100), (1.0, 400)];
        let mut now = t0;
        for (jitter, wait_ms) in expected {
            r.on_failure(
                &Policy {
                    threshold: 100,
                    ..p
                },
                now,
                jitter,
            );
            assert_eq!(r.next_attempt() - now, wait_ms * MS, "jitter {jitter}");
            now = r.next_attempt();
        }
        for _ in 0..10 {
            r.on_failure(
                &Policy {
                    threshold: 100,
                    ..p
                },
                now,
                1.0,
            );
            assert!(r.next_attempt() - now <= p.max);
            now = r.next_attempt();
        }
    }

    #[test]
    fn breaker_opens_after_threshold_then_probes_half_open() {
        let p = policy();
        let t0 = Instant::now();
        let mut r = Redial::new(&p, t0);
        for _ in 0..p.threshold {
            assert_eq!(r.breaker(), BreakerState::Closed);
            r.on_failure(&p, t0, 1.0);
        }
        assert_eq!(
            r.breaker(),
            BreakerState::Open {
                until: t0 + p.cooldown
            }
        );
        assert!(!r.ready(t0 + p.cooldown - MS), "open breaker blocks dials");
        assert!(r.ready(t0 + p.cooldown), "cooldown over: one probe");
        assert_eq!(r.breaker(), BreakerState::HalfOpen);

        // A failed probe reopens at once, whatever the failure count.
        let t1 = t0 + p.cooldown;
        r.on_failure(&p, t1, 1.0);
        assert_eq!(
            r.breaker(),
            BreakerState::Open {
                until: t1 + p.cooldown
            }
        );

        // A successful probe closes it and restarts the backoff.
        assert!(r.ready(t1 + p.cooldown));
        r.on_success(&p);
        assert_eq!(r.breaker(), BreakerState::Closed);
        assert_eq!(r.failures(), 0);
    }

    #[test]
    fn a_lost_connection_redials_after_the_initial_delay() {
        let p = policy();
        let t0 = Instant::now();
        let mut r = Redial::new(&p, t0);
        for _ in 0..3 {
            r.on_failure(&p, t0, 1.0);
        }
        r.on_success(&p);
        r.on_disconnected(&p, t0, 1.0);
        assert_eq!(r.next_attempt(), t0 + p.initial);
        assert!(!r.ready(t0));
        assert!(r.ready(t0 + p.initial));
    }

    #[test]
    fn a_lost_peer_is_probed_fast_without_opening_the_breaker_for_a_while() {
        let p = policy();
        let t0 = Instant::now();
        let mut r = Redial::new(&p, t0);
        r.on_disconnected(&p, t0, 1.0);
        let mut now = t0;
        for _ in 0..(p.threshold * 3) {
            r.on_failure(&p, now, 1.0);
            assert_eq!(r.breaker(), BreakerState::Closed);
            assert!(r.next_attempt() - now <= p.fast_max);
            now = r.next_attempt();
        }
        // After the window, the normal backoff and breaker apply again.
        let later = t0 + p.fast_window;
        for _ in 0..p.threshold {
            r.on_failure(&p, later, 1.0);
        }
        assert!(matches!(r.breaker(), BreakerState::Open { .. }));
    }
}
