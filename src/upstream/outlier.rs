//! Passive health: ejecting an upstream that real traffic shows to be failing or slow, and letting it
//! back in through probes.
//!
//! Four rules. As Envoy's outlier detection and Linkerd's failure accrual have them: N consecutive
//! failures, a failure rate with a minimum request count, and a latency outlier against the rest of
//! the pool. And, as nginx's `max_fails = 1`, a refused connection: nothing is listening, there is
//! no doubt to give the benefit of. Rates and latency are exponential averages over the last
//! `memory` attempts rather than time windows: latency-aware balancing sends a sick upstream almost
//! nothing, so a time window stays full of the healthy traffic from before the fault and the few
//! recent attempts never outweigh it.
//! Ejection lasts `base x number of ejections`, capped, plus jitter (Envoy's schedule). When it ends
//! the upstream is probing: a few requests are let through, one at a time, and it is re-admitted after
//! `probe_successes` good ones in a row, or ejected again, for longer, after a bad one.
//!
//! Unlike Envoy, a slow answer can be the failure: a brownout that keeps its health check green and
//! answers 200 after three seconds loses the customer as surely as a 503. This module is one
//! upstream's state; the pool-wide rules (never eject more than a share of a pool) live in `mod.rs`.

pub use crate::settings::OutlierSettings;
use std::time::{Duration, Instant};

/// Why an upstream was ejected, with the numbers that decided it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Reason {
    ConsecutiveFailures {
        count: u32,
    },
    ConnectFailures {
        count: u32,
    },
    FailureRate {
        rate: f64,
    },
    /// The fastest of its last [`LATENCY_WINDOW`] answers, against the mean of its peers'.
    Latency {
        fastest_ms: f64,
        peers_ms: f64,
    },
    FailedProbe,
    /// Requests waiting and no answer for this long (see `lane.rs`).
    Hung {
        silent_ms: u64,
        waiting: u32,
    },
}

impl Reason {
    /// The label used in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures { .. } => "consecutive_failures",
            Reason::ConnectFailures { .. } => "connect_failure",
            Reason::FailureRate { .. } => "failure_rate",
            Reason::Latency { .. } => "latency",
            Reason::FailedProbe => "failed_probe",
            Reason::Hung { .. } => "hung",
        }
    }

    pub fn describe(&self, s: &OutlierSettings) -> String {
        match self {
            Reason::ConsecutiveFailures { count } => {
                format!("{count} failures in a row (limit {})", s.consecutive_failures)
            }
            Reason::ConnectFailures { count } => {
                format!("{count} refused or unreachable connection(s) in a row")
            }
            Reason::FailureRate { rate } => format!(
                "{:.0}% of its recent requests failed (limit {:.0}%)",
                100.0 * rate,
                100.0 * s.failure_rate
            ),
            Reason::Latency { fastest_ms, peers_ms } => format!(
                "its last {LATENCY_WINDOW} answers all took {fastest_ms:.1} ms or more against {peers_ms:.1} ms for its peers on the route (limit x{})",
                s.latency_factor
            ),
            Reason::FailedProbe => "a probe request failed or was an outlier".to_string(),
            Reason::Hung { silent_ms, waiting } => format!(
                "{waiting} request(s) waiting or timed out and no answer for {silent_ms} ms (limit x{} the route's p99, at least {} ms)",
                s.hung_factor,
                s.hung_floor.as_millis()
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    Healthy,
    Ejected { until: Instant, reason: Reason },
    Probing { successes: u32, reason: Reason },
}

/// What an observation or a sweep changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// The upstream should be ejected (if the pool can spare it).
    Eject(Reason),
    /// The ejection time is over: probing starts.
    Probing,
    /// Probes succeeded: back in service.
    Restored,
}

#[derive(Debug, Clone)]
pub struct Passive {
    state: State,
    ejections: u32,
    consecutive: u32,
    consecutive_connect: u32,
    healthy_since: Instant,
    recent: Recent,
}

/// How many of the latest successful answers must all be slow for the latency rule. A route mixes
/// fast and slow requests (a catalogue page and a report export both under `/api`), so a mean
/// swings with which of them an upstream happened to get; that every one of its latest answers
/// was slow does not.
pub const LATENCY_WINDOW: usize = 5;

/// What the rate and latency rules judge: exponential averages over recent attempts, and the
/// latest answers' latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recent {
    /// Attempts since (re)admission.
    pub requests: u64,
    /// Successful attempts since (re)admission.
    pub ok: u64,
    /// Share of recent attempts that failed.
    pub failure_rate: f64,
    /// Average latency of recent successful attempts.
    pub mean_latency: Option<Duration>,
    /// The latest successful attempts' latencies in microseconds, a ring written at `ok % len`.
    latest_us: [u32; LATENCY_WINDOW],
}

impl Recent {
    fn push_latency(&mut self, latency: Duration) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.latest_us[(self.ok % LATENCY_WINDOW as u64) as usize] = us;
    }

    /// The fastest of the latest [`LATENCY_WINDOW`] successful answers, once there are that many.
    pub fn fastest_latest(&self) -> Option<Duration> {
        (self.ok >= LATENCY_WINDOW as u64)
            .then(|| self.latest_us.iter().min().copied())
            .flatten()
            .map(|us| Duration::from_micros(u64::from(us)))
    }
}

/// How an attempt ended, as passive health sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Ok,
    /// An answer 5xx, a broken response.
    Failed,
    /// No answer within the read timeout: a failure, and silence (see `lane.rs`).
    TimedOut,
    /// No connection: refused or unreachable.
    ConnectFailed,
}

impl Passive {
    pub fn new(now: Instant) -> Self {
        Passive {
            state: State::Healthy,
            ejections: 0,
            consecutive: 0,
            consecutive_connect: 0,
            healthy_since: now,
            recent: Recent::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    pub fn recent(&self) -> Recent {
        self.recent
    }

    /// Records one attempt's result. `latency_outlier` says whether this latency would make the
    /// upstream an outlier in its pool now (the caller knows the pool); it matters for probes.
    pub fn observe(
        &mut self,
        result: AttemptResult,
        latency: Duration,
        latency_outlier: bool,
        now: Instant,
        s: &OutlierSettings,
    ) -> Option<Change> {
        let failed = result != AttemptResult::Ok;
        let w = 1.0 / f64::from(s.memory.max(1));
        let r = &mut self.recent;
        r.requests += 1;
        r.failure_rate = r.failure_rate * (1.0 - w) + if failed { w } else { 0.0 };
        if !failed {
            r.push_latency(latency);
            r.ok += 1;
            let l = latency.as_secs_f64();
            let avg = r
                .mean_latency
                .map_or(l, |m| m.as_secs_f64() * (1.0 - w) + l * w);
            r.mean_latency = Some(Duration::from_secs_f64(avg));
        }
        match self.state {
            State::Healthy => {
                if result == AttemptResult::ConnectFailed {
                    self.consecutive_connect += 1;
                    if self.consecutive_connect >= s.connect_failures {
                        return Some(Change::Eject(Reason::ConnectFailures {
                            count: self.consecutive_connect,
                        }));
                    }
                } else {
                    self.consecutive_connect = 0;
                }
                if failed {
                    self.consecutive += 1;
                    if self.consecutive >= s.consecutive_failures {
                        return Some(Change::Eject(Reason::ConsecutiveFailures {
                            count: self.consecutive,
                        }));
                    }
                } else {
                    self.consecutive = 0;
                }
                let rate = self.recent.failure_rate;
                (self.recent.requests >= u64::from(s.min_requests) && rate > s.failure_rate)
                    .then_some(Change::Eject(Reason::FailureRate { rate }))
            }
            State::Probing { successes, reason } => {
                if failed || latency_outlier {
                    Some(Change::Eject(Reason::FailedProbe))
                } else if successes + 1 >= s.probe_successes {
                    self.restore(now);
                    Some(Change::Restored)
                } else {
                    self.state = State::Probing {
                        successes: successes + 1,
                        reason,
                    };
                    None
                }
            }
            // In flight when the ejection happened: already accounted for.
            State::Ejected { .. } => None,
        }
    }

    fn restore(&mut self, now: Instant) {
        self.state = State::Healthy;
        self.consecutive = 0;
        self.consecutive_connect = 0;
        self.healthy_since = now;
        // What got it ejected must not get it ejected again: judge it afresh.
        self.recent = Recent::default();
    }

    /// Ejects now. `jitter_draw` in 0..1 picks the jitter (a random number in production).
    pub fn eject(
        &mut self,
        reason: Reason,
        now: Instant,
        jitter_draw: f64,
        s: &OutlierSettings,
    ) -> Instant {
        // Envoy lowers the multiplier while a host stays healthy; here a host healthy for a full
        // max_ejection starts over.
        if matches!(self.state, State::Healthy)
            && now.saturating_duration_since(self.healthy_since) >= s.max_ejection
        {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        let base = s
            .base_ejection
            .saturating_mul(self.ejections)
            .min(s.max_ejection);
        let jitter = base.mul_f64((s.jitter * jitter_draw.clamp(0.0, 1.0)).max(0.0));
        // Settings are bounded by validation, but an Instant overflow would panic on the request
        // path: saturate instead.
        let until = now
            .checked_add(base.saturating_add(jitter))
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        self.state = State::Ejected { until, reason };
        self.consecutive = 0;
        self.consecutive_connect = 0;
        until
    }

    /// Puts back what a snapshot kept: the state (ejected ones with their end moved to this
    /// process's clock) and the number of ejections, which sets the next ejection's length.
    pub fn restore_from(&mut self, state: State, ejections: u32) {
        self.state = state;
        self.ejections = ejections;
    }

    /// Periodic: ends ejections whose time is up. (The latency rule needs the pool: `mod.rs`.)
    pub fn sweep(&mut self, now: Instant) -> Option<Change> {
        match self.state {
            State::Ejected { until, reason } if now >= until => {
                self.state = State::Probing {
                    successes: 0,
                    reason,
                };
                Some(Change::Probing)
            }
            _ => None,
        }
    }
}

/// Is `mean` a latency outlier against `peers` (the median of the rest of the pool)?
pub fn is_latency_outlier(mean: Duration, peers: Duration, s: &OutlierSettings) -> bool {
    mean.as_secs_f64() > s.latency_factor * peers.as_secs_f64()
        && mean.saturating_sub(peers) >= s.latency_min_delta
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttemptResult::*;

    fn s() -> OutlierSettings {
        OutlierSettings::default()
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn feed(p: &mut Passive, r: AttemptResult, n: usize, t: Instant) -> Option<Change> {
        (0..n)
            .filter_map(|_| p.observe(r, ms(1), false, t, &s()))
            .last()
    }

    #[test]
    fn consecutive_failures_eject_and_successes_reset_the_count() {
        let t0 = Instant::now();
        let mut p = Passive::new(t0);
        assert_eq!(feed(&mut p, Failed, 4, t0), None);
        assert_eq!(p.observe(Ok, ms(1), false, t0, &s()), None);
        assert_eq!(feed(&mut p, Failed, 4, t0), None);
        assert_eq!(
            p.observe(Failed, ms(1), false, t0, &s()),
            Some(Change::Eject(Reason::ConsecutiveFailures { count: 5 }))
        );
    }

    #[test]
    fn a_refused_connection_ejects_at_once() {
        let t0 = Instant::now();
        let mut p = Passive::new(t0);
        assert_eq!(
            p.observe(ConnectFailed, ms(1), false, t0, &s()),
            Some(Change::Eject(Reason::ConnectFailures { count: 1 }))
        );
        let strict = OutlierSettings {
            connect_failures: 2,
            ..s()
        };
        let mut q = Passive::new(t0);
        assert_eq!(q.observe(ConnectFailed, ms(1), false, t0, &strict), None);
        assert_eq!(q.observe(Ok, ms(1), false, t0, &strict), None);
        assert_eq!(
            q.observe(ConnectFailed, ms(1), false, t0, &strict),
            None,
            "not in a row"
        );
    }

    #[test]
    fn failure_rate_weighs_recent_attempts_not_old_volume() {
        let t0 = Instant::now();
        let mut p = Passive::new(t0);
        // A long healthy history...
        assert_eq!(feed(&mut p, Ok, 1000, t0), None);
        // ...then half the answers fail, never five in a row.
        let mut ejected = None;
        for i in 0..20 {
            let r = if i % 2 == 0 { Failed } else { Ok };
            if let Some(c) = p.observe(r, ms(1), false, t0, &s()) {
                ejected = Some((i, c));
                break;
            }
        }
        let (after, change) = ejected.expect("a 50% failure rate is caught");
        assert!(
            after < 12,
            "caught after {after} attempts, whatever came before"
        );
        assert!(matches!(change, Change::Eject(Reason::FailureRate { rate }) if rate > 0.25));
    }

    #[test]
    fn failure_rate_needs_enough_requests_and_a_high_enough_rate() {
        let t0 = Instant::now();
        let mut p = Passive::new(t0);
        // 19 attempts, alternating: a high rate, but fewer than min_requests.
        for i in 0..19 {
            let r = if i % 2 == 0 { Failed } else { Ok };
            assert_eq!(p.observe(r, ms(1), false, t0, &s()), None);
        }
        // One failure in ten stays well under 25%.
        let mut q = Passive::new(t0);
        for i in 0..500 {
            let r = if i % 10 == 0 { Failed } else { Ok };
            assert_eq!(q.observe(r, ms(1), false, t0, &s()), None);
        }
    }

    #[test]
    fn recent_latency_follows_the_last_attempts() {
        let t0 = Instant::now();
        let mut p = Passive::new(t0);
        for _ in 0..1000 {
            p.observe(Ok, ms(1), false, t0, &s());
        }
        for _ in 0..5 {
            p.observe(Ok, ms(1000), false, t0, &s());
        }
        let mean = p.recent().mean_latency.unwrap();
        // 1 - 0.9^5 of the way to 1 s.
        assert!(mean > ms(400) && mean < ms(420), "{mean:?}");
    }

    #[test]
    fn ejection_grows_with_repeats_is_capped_and_jittered() {
        let st = s();
        let t0 = Instant::now();
        let mut p = Passive::new(t0);
        let until = p.eject(Reason::FailedProbe, t0, 0.0, &st);
        assert_eq!(until - t0, Duration::from_secs(30));
        let until = p.eject(Reason::FailedProbe, t0, 0.0, &st);
        assert_eq!(until - t0, Duration::from_secs(60));
        let until = p.eject(Reason::FailedProbe, t0, 1.0, &st);
        assert_eq!(until - t0, Duration::from_secs(99), "90 s + 10% jitter");
        for _ in 0..20 {
            p.eject(Reason::FailedProbe, t0, 0.0, &st);
        }
        let until = p.eject(Reason::FailedProbe, t0, 0.5, &st);
        assert_eq!(
            until - t0,
            Duration::from_secs(315),
            "capped at 300 s, plus 5%"
        );
    }

    #[test]
    fn probing_readmits_after_successes_and_reejects_on_failure() {
        let st = s();
        let t0 = Instant::now();
        let mut p = Passive::new(t0);
        let until = p.eject(Reason::ConsecutiveFailures { count: 5 }, t0, 0.0, &st);
        assert_eq!(p.sweep(until - ms(1)), None);
        assert_eq!(p.sweep(until), Some(Change::Probing));
        assert_eq!(p.observe(Ok, ms(1), false, until, &st), None);
        assert_eq!(p.observe(Ok, ms(1), false, until, &st), None);
        assert_eq!(
            p.observe(Ok, ms(1), false, until, &st),
            Some(Change::Restored)
        );
        assert_eq!(p.state(), State::Healthy);
        assert_eq!(p.recent().requests, 0, "judged afresh after re-admission");
        // A slow probe counts as a failed one.
        let until = p.eject(Reason::FailedProbe, until, 0.0, &st);
        p.sweep(until);
        assert_eq!(
            p.observe(Ok, ms(900), true, until, &st),
            Some(Change::Eject(Reason::FailedProbe))
        );
    }

    #[test]
    fn the_multiplier_resets_after_a_long_healthy_spell() {
        let st = s();
        let t0 = Instant::now();
        let mut p = Passive::new(t0);
        let u1 = p.eject(Reason::FailedProbe, t0, 0.0, &st);
        p.sweep(u1);
        for _ in 0..3 {
            p.observe(Ok, ms(1), false, u1, &st);
        }
        let later = u1 + Duration::from_secs(301);
        let u2 = p.eject(Reason::FailedProbe, later, 0.0, &st);
        assert_eq!(u2 - later, Duration::from_secs(30));
    }

    #[test]
    fn latency_outliers_need_both_factor_and_delta() {
        let st = s();
        assert!(is_latency_outlier(ms(301), ms(1), &st));
        assert!(
            !is_latency_outlier(ms(40), ms(1), &st),
            "fast enough in absolute terms"
        );
        assert!(!is_latency_outlier(ms(250), ms(100), &st), "under 3x");
        assert!(is_latency_outlier(ms(400), ms(100), &st));
    }
}
