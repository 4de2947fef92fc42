//! Peak-EWMA latency estimate: the load metric behind usher's upstream choice.
//!
//! After Finagle's and tower's `PeakEwma` (`tower/src/load/peak_ewma.rs`) and linkerd2-proxy's
//! `ewma`: a slower observation replaces the estimate at once (an upstream that just got slow must stop
//! looking fast immediately), a faster one pulls it down gradually with time constant `decay`, and with
//! no observations the estimate decays toward zero, so an idle upstream is tried again eventually. A
//! failure is observed as a penalty that is never below the current estimate (linkerd's load-biaser
//! rule: a failing target must never look healthier than it is). The caller passes `now`; reading
//! never mutates.

pub use crate::settings::EwmaSettings;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    /// Seconds.
    estimate: f64,
    at: Instant,
    observed: bool,
}

impl PeakEwma {
    pub fn new(now: Instant) -> Self {
        PeakEwma {
            estimate: 0.0,
            at: now,
            observed: false,
        }
    }

    fn decayed(&self, now: Instant, settings: &EwmaSettings) -> f64 {
        // Never observed: `default_rtt`, decaying from when it was created (as tower's does), or
        // an upstream that never got a first request would look worse than every measured one
        // for ever, and balancing alone would never try it.
        let from = if self.observed {
            self.estimate
        } else {
            settings.default_rtt.as_secs_f64()
        };
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        let tau = settings.decay.as_secs_f64().max(1e-3);
        from * (-dt / tau).exp()
    }

    /// Whether anything was observed yet (before that, the estimate is `default_rtt`).
    pub fn observed(&self) -> bool {
        self.observed
    }

    /// The estimate at `now`, in seconds.
    pub fn estimate(&self, now: Instant, settings: &EwmaSettings) -> f64 {
        self.decayed(now, settings)
    }

    /// The estimate as last observed, without idle decay: what protected traffic goes by. An
    /// upstream that was slow when last seen stays slow for protected customers until ordinary
    /// traffic, which does see the decay and so explores, finds it fast again.
    pub fn last_observed(&self, settings: &EwmaSettings) -> f64 {
        if self.observed {
            self.estimate
        } else {
            settings.default_rtt.as_secs_f64()
        }
    }

    pub fn observe(&mut self, rtt: Duration, now: Instant, settings: &EwmaSettings) {
        let rtt = rtt.as_secs_f64();
        let current = self.decayed(now, settings);
        let next = if !self.observed || rtt > current {
            rtt
        } else {
            let dt = now.saturating_duration_since(self.at).as_secs_f64();
            let tau = settings.decay.as_secs_f64().max(1e-3);
            let w = (-dt / tau).exp();
            current * w + rtt * (1.0 - w)
        };
        debug_assert!(next.is_finite() && next >= 0.0);
        self.estimate = next;
        self.at = self.at.max(now);
        self.observed = true;
    }

    /// One attempt's result: its latency, or a failure.
    pub fn record(&mut self, failed: bool, rtt: Duration, now: Instant, settings: &EwmaSettings) {
        if failed {
            self.observe_failure(now, settings);
        } else {
            self.observe(rtt, now, settings);
        }
    }

    /// A failure: the estimate jumps to the penalty, or stays where it is if already worse.
    pub fn observe_failure(&mut self, now: Instant, settings: &EwmaSettings) {
        let current = self.decayed(now, settings);
        let penalty = settings.failure_penalty.as_secs_f64().max(current);
        self.observe(Duration::from_secs_f64(penalty), now, settings);
    }
}

/// The comparable load of an upstream: estimated latency times the requests it would be serving.
pub fn cost(estimate_secs: f64, in_flight: u32) -> f64 {
    estimate_secs * (f64::from(in_flight) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn starts_at_default_and_jumps_up_at_once() {
        let s = EwmaSettings::default();
        let t0 = Instant::now();
        let mut e = PeakEwma::new(t0);
        assert!((e.estimate(t0, &s) - 0.030).abs() < 1e-9);
        e.observe(ms(5), t0, &s);
        assert!((e.estimate(t0, &s) - 0.005).abs() < 1e-9);
        e.observe(ms(300), t0 + ms(1), &s);
        assert!(
            (e.estimate(t0 + ms(1), &s) - 0.300).abs() < 1e-6,
            "a slower sample is taken at once"
        );
    }

    #[test]
    fn faster_samples_pull_down_gradually() {
        let s = EwmaSettings::default();
        let t0 = Instant::now();
        let mut e = PeakEwma::new(t0);
        e.observe(ms(300), t0, &s);
        e.observe(ms(1), t0 + ms(100), &s);
        let v = e.estimate(t0 + ms(100), &s);
        // 100 ms of a 10 s time constant: about 1% of the way down.
        assert!(v > 0.29 && v < 0.30, "{v}");
        for i in 2..=300 {
            e.observe(ms(1), t0 + ms(100 * i), &s);
        }
        assert!(e.estimate(t0 + ms(30_000), &s) < 0.02);
    }

    #[test]
    fn idle_estimate_decays_toward_zero() {
        let s = EwmaSettings::default();
        let t0 = Instant::now();
        let mut e = PeakEwma::new(t0);
        e.observe(ms(1000), t0, &s);
        let later = e.estimate(t0 + Duration::from_secs(10), &s);
        assert!((later - 1.0 / std::f64::consts::E).abs() < 1e-6, "{later}");
        // Reading did not change it, and the last observation is still there for protected traffic.
        assert!((e.estimate(t0, &s) - 1.0).abs() < 1e-9);
        assert!((e.last_observed(&s) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_failure_never_looks_better_than_the_estimate() {
        let s = EwmaSettings::default();
        let t0 = Instant::now();
        let mut e = PeakEwma::new(t0);
        e.observe_failure(t0, &s);
        assert!((e.estimate(t0, &s) - 1.0).abs() < 1e-9, "penalty applies");
        let mut slow = PeakEwma::new(t0);
        slow.observe(Duration::from_secs(5), t0, &s);
        slow.observe_failure(t0, &s);
        assert!(
            (slow.estimate(t0, &s) - 5.0).abs() < 1e-9,
            "never below the estimate"
        );
    }

    #[test]
    fn an_unmeasured_estimate_decays_too() {
        let s = EwmaSettings::default();
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        let later = e.estimate(t0 + Duration::from_secs(10), &s);
        assert!(
            (later - 0.030 / std::f64::consts::E).abs() < 1e-9,
            "{later}"
        );
        assert!((e.last_observed(&s) - 0.030).abs() < 1e-9);
    }

    #[test]
    fn cost_grows_with_in_flight() {
        assert_eq!(cost(0.01, 0), 0.01);
        assert_eq!(cost(0.01, 3), 0.04);
    }
}
