//! Aggregate latency and error figures per route and per upstream, for the admin API.
//!
//! Counts are cumulative since start. Percentiles come from HdrHistograms over a sliding window of one
//! to two minutes (two one-minute histograms, rotated), because "p99 since last Tuesday" tells an
//! operator nothing about now. Prometheus histograms carry the long view; these answer "what is it
//! like right now" without a query language. Time is passed in.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const WINDOW_MS: u64 = 60_000;
/// 1 us to 1 hour at 2 significant digits: about 10 KiB per histogram.
const MAX_US: u64 = 3_600_000_000;

pub struct LatencyStats {
    requests: AtomicU64,
    failures: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    window: Mutex<Window>,
}

struct Window {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    /// Failed requests among those timed in `current` and `previous`.
    failed: [u64; 2],
    started_ms: u64,
}

/// A point-in-time reading, as served by `/routes` and `/upstreams`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatsView {
    pub requests: u64,
    pub failures: u64,
    pub failure_rate: f64,
    /// Request body bytes received from clients.
    pub bytes_in: u64,
    /// Response body bytes sent to clients.
    pub bytes_out: u64,
    /// Requests in the latency window.
    pub recent: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 2).expect("static histogram bounds are valid")
}

impl Default for LatencyStats {
    fn default() -> Self {
        LatencyStats {
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            window: Mutex::new(Window {
                current: histogram(),
                previous: histogram(),
                failed: [0; 2],
                started_ms: 0,
            }),
        }
    }
}

impl LatencyStats {
    /// Counts one request; `latency` is `None` when there is nothing to time (a refused
    /// connection has no upstream time), and then only the counts move.
    pub fn record(&self, latency: Option<Duration>, failed: bool, bytes: (u64, u64), now_ms: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes.0, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes.1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let Some(latency) = latency else { return };
        let us = (latency.as_micros() as u64).clamp(1, MAX_US);
        let mut w = self.window.lock();
        w.rotate(now_ms);
        w.current.saturating_record(us);
        if failed {
            w.failed[0] += 1;
        }
    }

    pub fn add_bytes(&self, bytes: (u64, u64)) {
        self.bytes_in.fetch_add(bytes.0, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes.1, Ordering::Relaxed);
    }

    /// Requests counted since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The `q` quantile of the latency window in microseconds, with the number of requests it
    /// rests on.
    pub fn window_quantile(&self, q: f64, now_ms: u64) -> (u64, u64) {
        let merged = self.window(now_ms);
        if merged.is_empty() {
            return (0, 0);
        }
        (merged.len(), merged.value_at_quantile(q))
    }

    /// Apdex of the latency window against `target`: (satisfied + tolerating / 2) / all, where
    /// satisfied is within the target, tolerating within four times it, and a failure is
    /// frustrated however fast it came (each is taken off the satisfied, as failures are mostly
    /// quick). `None` without requests.
    pub fn window_apdex(&self, target: Duration, now_ms: u64) -> Option<f64> {
        let merged = self.window(now_ms);
        if merged.is_empty() {
            return None;
        }
        let failed = {
            let w = self.window.lock();
            w.failed[0] + w.failed[1]
        };
        let t = (target.as_micros() as u64).clamp(1, MAX_US);
        let satisfied = merged.count_between(0, t) as f64;
        let tolerating = merged.count_between(t + 1, t.saturating_mul(4).min(MAX_US)) as f64;
        let points = (satisfied + tolerating / 2.0 - failed as f64).max(0.0);
        Some((points / merged.len() as f64).clamp(0.0, 1.0))
    }

    fn window(&self, now_ms: u64) -> Histogram<u64> {
        let mut w = self.window.lock();
        w.rotate(now_ms);
        let mut m = w.previous.clone();
        // Same bounds on both sides, so adding cannot fail.
        let _ = m.add(&w.current);
        m
    }

    pub fn view(&self, now_ms: u64) -> StatsView {
        let requests = self.requests.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        let merged = self.window(now_ms);
        let ms = |q: f64| {
            if merged.is_empty() {
                0.0
            } else {
                merged.value_at_quantile(q) as f64 / 1000.0
            }
        };
        StatsView {
            requests,
            failures,
            failure_rate: if requests == 0 {
                0.0
            } else {
                failures as f64 / requests as f64
            },
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            recent: merged.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: if merged.is_empty() {
                0.0
            } else {
                merged.max() as f64 / 1000.0
            },
        }
    }
}

impl Window {
    fn rotate(&mut self, now_ms: u64) {
        let age = now_ms.saturating_sub(self.started_ms);
        if age < WINDOW_MS {
            return;
        }
        if age < 2 * WINDOW_MS {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
            self.failed = [0, self.failed[0]];
        } else {
            // Idle for over two windows: nothing recent is left.
            self.current.reset();
            self.previous.reset();
            self.failed = [0; 2];
        }
        self.started_ms = now_ms - now_ms % WINDOW_MS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cover_one_to_two_minutes() {
        let s = LatencyStats::default();
        let t0 = 10 * WINDOW_MS;
        for i in 1..=100 {
            s.record(Some(Duration::from_millis(i)), i > 95, (1, 10), t0);
        }
        let v = s.view(t0 + 1);
        assert_eq!((v.requests, v.failures, v.recent), (100, 5, 100));
        assert!((v.p50_ms - 50.0).abs() < 1.0, "{v:?}");
        assert!((v.p99_ms - 99.0).abs() < 1.5, "{v:?}");
        assert!((v.failure_rate - 0.05).abs() < 1e-9);
        assert_eq!((v.bytes_in, v.bytes_out), (100, 1000));
        // Next minute: still visible, merged with new data.
        s.record(
            Some(Duration::from_millis(1000)),
            false,
            (0, 0),
            t0 + WINDOW_MS + 5,
        );
        // A refused connection: counted, not timed.
        s.record(None, true, (0, 0), t0 + WINDOW_MS + 6);
        let v = s.view(t0 + WINDOW_MS + 7);
        assert_eq!(
            (v.recent, v.requests, v.failures),
            (101, 102, 6),
            "counted without a latency"
        );
        assert!(v.max_ms >= 990.0);
        // Two minutes on, the first minute is gone; counts remain.
        let v = s.view(t0 + 2 * WINDOW_MS + 10);
        assert_eq!((v.recent, v.requests), (1, 102));
        let v = s.view(t0 + 10 * WINDOW_MS);
        assert_eq!((v.recent, v.p99_ms), (0, 0.0));
    }

    #[test]
    fn apdex_counts_slow_answers_half_and_failures_not_at_all() {
        let s = LatencyStats::default();
        let t0 = 10 * WINDOW_MS;
        let target = Duration::from_millis(100);
        assert_eq!(s.window_apdex(target, t0), None);
        // 6 satisfied (2 of them failed), 2 tolerating, 2 frustrated: (4 + 1) / 10.
        for (ms, failed) in [
            (10, false),
            (20, false),
            (30, false),
            (40, false),
            (5, true),
            (6, true),
        ] {
            s.record(Some(Duration::from_millis(ms)), failed, (0, 0), t0);
        }
        for ms in [200, 300, 900, 1000] {
            s.record(Some(Duration::from_millis(ms)), false, (0, 0), t0);
        }
        let a = s.window_apdex(target, t0 + 1).unwrap();
        assert!((a - 0.5).abs() < 1e-9, "{a}");
        // Two minutes on, nothing recent is left, failures included.
        assert_eq!(s.window_apdex(target, t0 + 3 * WINDOW_MS), None);
    }
}
