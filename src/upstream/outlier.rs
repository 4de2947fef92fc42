//! Passive health: ejecting an upstream that real traffic shows to be failing or slow, and letting it
//! back in through probes.
//!
//! Three rules, as Envoy's outlier detection and Linkerd's failure accrual have them: N consecutive
//! failures (checked on every response), a failure rate over a sliding window with a minimum request
//! count, and a latency outlier against the rest of the pool (both checked by the periodic sweep).
//! Ejection lasts `base x number of ejections`, capped, plus jitter (Envoy's schedule). When it ends
//! the upstream is probing: a few requests are let through, one at a time, and it is re-admitted after
//! `probe_successes` good ones in a row, or ejected again, for longer, after a bad one.
//!
//! Unlike Envoy, a slow answer can be the failure: a brownout that keeps its health check green and
//! answers 200 after three seconds loses the customer as surely as a 503. This module is one
//! upstream's state; the pool-wide rules (never eject more than a share of a pool) live in `mod.rs`.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct OutlierSettings {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub latency_factor: f64,
    pub latency_min_delta: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Extra ejection time, as a share of the ejection time, drawn at random up to this.
    pub jitter: f64,
    pub max_ejected_share: f64,
    pub probe_successes: u32,
    pub panic_below: f64,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            // Envoy: consecutive_5xx 5, base_ejection_time 30 s, max_ejection_time 300 s,
            // max_ejection_percent 10 (at least one host), healthy_panic_threshold 50%.
            consecutive_failures: 5,
            // Envoy's failure_percentage_threshold is 85% with 50 requests, meant for large fleets;
            // a checkout that fails one time in four is already losing sales.
            failure_rate: 0.25,
            min_requests: 20,
            window: Duration::from_secs(10),
            latency_factor: 3.0,
            latency_min_delta: Duration::from_millis(50),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            jitter: 0.1,
            max_ejected_share: 0.1,
            probe_successes: 3,
            panic_below: 0.5,
        }
    }
}

/// Why an upstream was ejected, with the numbers that decided it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    ConsecutiveFailures { count: u32 },
    FailureRate { failures: u64, requests: u64 },
    Latency { mean_ms: f64, peers_ms: f64 },
    FailedProbe,
}

impl Reason {
    /// The label used in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures { .. } => "consecutive_failures",
            Reason::FailureRate { .. } => "failure_rate",
            Reason::Latency { .. } => "latency",
            Reason::FailedProbe => "failed_probe",
        }
    }

    pub fn describe(&self, s: &OutlierSettings) -> String {
        match self {
            Reason::ConsecutiveFailures { count } => {
                format!("{count} failures in a row (limit {})", s.consecutive_failures)
            }
            Reason::FailureRate { failures, requests } => format!(
                "{failures} of {requests} requests failed in {:?} ({:.0}% > {:.0}%)",
                s.window,
                100.0 * *failures as f64 / (*requests).max(1) as f64,
                100.0 * s.failure_rate
            ),
            Reason::Latency { mean_ms, peers_ms } => format!(
                "mean latency {mean_ms:.1} ms against {peers_ms:.1} ms for the rest of the pool (limit x{})",
                s.latency_factor
            ),
            Reason::FailedProbe => "a probe request failed or was an outlier".to_string(),
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

/// One second of traffic.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    sec: u64,
    requests: u64,
    failures: u64,
    latency_us: u64,
    ok: u64,
}

#[derive(Debug, Clone)]
pub struct Passive {
    state: State,
    ejections: u32,
    consecutive: u32,
    healthy_since: Instant,
    origin: Instant,
    buckets: Vec<Bucket>,
}

/// Traffic over the window: what the sweep judges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    pub requests: u64,
    pub failures: u64,
    /// Mean latency of the successful requests, when there were any.
    pub mean_latency: Option<Duration>,
    pub ok: u64,
}

impl Passive {
    pub fn new(now: Instant, settings: &OutlierSettings) -> Self {
        Passive {
            state: State::Healthy,
            ejections: 0,
            consecutive: 0,
            healthy_since: now,
            origin: now,
            buckets: vec![
                Bucket {
                    sec: u64::MAX,
                    ..Default::default()
                };
                settings.window.as_secs().max(1) as usize
            ],
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    fn sec(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    pub fn window(&self, now: Instant) -> WindowStats {
        let sec = self.sec(now);
        let n = self.buckets.len() as u64;
        let mut w = WindowStats::default();
        let mut lat = 0u64;
        for b in self
            .buckets
            .iter()
            .filter(|b| b.sec != u64::MAX && b.sec <= sec && sec - b.sec < n)
        {
            w.requests += b.requests;
            w.failures += b.failures;
            w.ok += b.ok;
            lat += b.latency_us;
        }
        w.mean_latency = lat.checked_div(w.ok).map(Duration::from_micros);
        w
    }

    /// Records one attempt's result. `latency_outlier` says whether this latency would make the
    /// upstream an outlier in its pool now (the caller knows the pool); it matters for probes.
    pub fn observe(
        &mut self,
        failed: bool,
        latency: Duration,
        latency_outlier: bool,
        now: Instant,
        s: &OutlierSettings,
    ) -> Option<Change> {
        let sec = self.sec(now);
        let n = self.buckets.len();
        let b = &mut self.buckets[(sec % n as u64) as usize];
        if b.sec != sec {
            *b = Bucket {
                sec,
                ..Default::default()
            };
        }
        b.requests += 1;
        if failed {
            b.failures += 1;
        } else {
            b.ok += 1;
            b.latency_us += latency.as_micros() as u64;
        }
        match self.state {
            State::Healthy => {
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
                None
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
        self.healthy_since = now;
        // What got it ejected must not get it ejected again on the next sweep.
        for b in &mut self.buckets {
            b.sec = u64::MAX;
        }
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
        let until = now + base + jitter;
        self.state = State::Ejected { until, reason };
        self.consecutive = 0;
        until
    }

    /// Periodic: ends ejections whose time is up, and judges failure rate. Latency is judged by
    /// the caller, who knows the pool.
    pub fn sweep(&mut self, now: Instant, s: &OutlierSettings) -> Option<Change> {
        match self.state {
            State::Ejected { until, reason } if now >= until => {
                self.state = State::Probing {
                    successes: 0,
                    reason,
                };
                Some(Change::Probing)
            }
            State::Healthy => {
                let w = self.window(now);
                (w.requests >= u64::from(s.min_requests)
                    && w.failures as f64 > s.failure_rate * w.requests as f64)
                    .then_some(Change::Eject(Reason::FailureRate {
                        failures: w.failures,
                        requests: w.requests,
                    }))
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

    fn s() -> OutlierSettings {
        OutlierSettings::default()
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn consecutive_failures_eject_and_successes_reset_the_count() {
        let t0 = Instant::now();
        let mut p = Passive::new(t0, &s());
        for _ in 0..4 {
            assert_eq!(p.observe(true, ms(1), false, t0, &s()), None);
        }
        assert_eq!(p.observe(false, ms(1), false, t0, &s()), None);
        for _ in 0..4 {
            assert_eq!(p.observe(true, ms(1), false, t0, &s()), None);
        }
        assert_eq!(
            p.observe(true, ms(1), false, t0, &s()),
            Some(Change::Eject(Reason::ConsecutiveFailures { count: 5 }))
        );
    }

    #[test]
    fn failure_rate_needs_enough_requests_and_a_high_enough_rate() {
        let t0 = Instant::now();
        let mut p = Passive::new(t0, &s());
        // Alternate: never 5 in a row, but 50% fail.
        for i in 0..18 {
            p.observe(i % 2 == 0, ms(1), false, t0, &s());
        }
        assert_eq!(
            p.sweep(t0, &s()),
            None,
            "18 requests are below the minimum of 20"
        );
        for i in 0..2 {
            p.observe(i % 2 == 0, ms(1), false, t0, &s());
        }
        assert_eq!(
            p.sweep(t0, &s()),
            Some(Change::Eject(Reason::FailureRate {
                failures: 10,
                requests: 20
            }))
        );
        // 20% is under the 25% threshold.
        let mut q = Passive::new(t0, &s());
        for i in 0..100 {
            q.observe(i % 5 == 0, ms(1), false, t0, &s());
        }
        assert_eq!(q.sweep(t0, &s()), None);
    }

    #[test]
    fn the_window_forgets_old_traffic() {
        let t0 = Instant::now();
        let mut p = Passive::new(t0, &s());
        for _ in 0..4 {
            for _ in 0..10 {
                p.observe(true, ms(1), false, t0, &s());
                p.observe(false, ms(1), false, t0, &s());
            }
        }
        assert!(p
            .sweep(t0 + Duration::from_secs(10) + ms(1), &s())
            .is_none());
        assert_eq!(p.window(t0 + Duration::from_secs(11)).requests, 0);
    }

    #[test]
    fn ejection_grows_with_repeats_is_capped_and_jittered() {
        let st = s();
        let t0 = Instant::now();
        let mut p = Passive::new(t0, &st);
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
        let mut p = Passive::new(t0, &st);
        let until = p.eject(Reason::ConsecutiveFailures { count: 5 }, t0, 0.0, &st);
        assert_eq!(p.sweep(until - ms(1), &st), None);
        assert_eq!(p.sweep(until, &st), Some(Change::Probing));
        assert_eq!(p.observe(false, ms(1), false, until, &st), None);
        assert_eq!(p.observe(false, ms(1), false, until, &st), None);
        assert_eq!(
            p.observe(false, ms(1), false, until, &st),
            Some(Change::Restored)
        );
        assert_eq!(p.state(), State::Healthy);
        // A slow probe counts as a failed one.
        let until = p.eject(Reason::FailedProbe, until, 0.0, &st);
        p.sweep(until, &st);
        assert_eq!(
            p.observe(false, ms(900), true, until, &st),
            Some(Change::Eject(Reason::FailedProbe))
        );
    }

    #[test]
    fn the_multiplier_resets_after_a_long_healthy_spell() {
        let st = s();
        let t0 = Instant::now();
        let mut p = Passive::new(t0, &st);
        let u1 = p.eject(Reason::FailedProbe, t0, 0.0, &st);
        p.sweep(u1, &st);
        for _ in 0..3 {
            p.observe(false, ms(1), false, u1, &st);
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
