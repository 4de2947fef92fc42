//! A small programmable HTTP/1.1 origin on hyper: the demo's web servers, the tests' upstreams and the
//! bench harness's faults.
//!
//! Answers every request with a short JSON echo (origin name, method, path and the request's `x-*`
//! and `x_*` headers, so tests can see what usher forwarded), keeps connections alive, and can be told at run
//! time to add delay (everywhere or under a path prefix), to fail a fraction of requests with 503, or
//! to fail its health check. Failures are spread evenly and deterministically (every k-th request),
//! not at random, so tests get exact ratios. Not a production server.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Path answered by the origin's health check.
pub const HEALTH_PATH: &str = "/healthz";

/// Run-time behaviour of an origin; every setter takes effect on the next request.
#[derive(Debug, Default)]
pub struct Behavior {
    delay_us: AtomicU64,
    /// Added to successful non-health answers only (a brownout: errors come fast, the rest crawl).
    slow_ok_us: AtomicU64,
    /// Failures per million requests.
    fail_ppm: AtomicU64,
    unhealthy: AtomicBool,
    slow_paths: Mutex<Vec<(String, Duration)>>,
    requests: AtomicU64,
    failed: AtomicU64,
    connections: AtomicU64,
    /// Connections accepted from now on answer once and close (`connection: close`).
    one_answer_per_connection: AtomicBool,
}

impl Behavior {
    /// Adds `d` to every answer (health checks included: a brownout rarely spares them).
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// A brownout: `ratio` of requests answered 503 at once, the rest after `delay`; the health
    /// check stays fast and green.
    pub fn set_brownout(&self, ratio: f64, delay: Duration) {
        self.set_failure_ratio(ratio);
        self.slow_ok_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Answers this share (0.0..=1.0) of non-health requests with 503.
    pub fn set_failure_ratio(&self, ratio: f64) {
        let ppm = (ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.fail_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Makes `/healthz` answer 503 (or 200 again).
    pub fn set_unhealthy(&self, unhealthy: bool) {
        self.unhealthy.store(unhealthy, Ordering::Relaxed);
    }

    /// Adds `d` to answers for paths under `prefix`.
    pub fn add_slow_path(&self, prefix: &str, d: Duration) {
        self.slow_paths.lock().push((prefix.to_string(), d));
    }

    /// Answers one request per connection and closes it, so that every request through a proxy
    /// needs a new upstream connect (a pool's reuse would otherwise depend on timing).
    pub fn set_one_answer_per_connection(&self, on: bool) {
        self.one_answer_per_connection.store(on, Ordering::Relaxed);
    }

    /// Back to a fast, healthy origin.
    pub fn reset(&self) {
        self.set_delay(Duration::ZERO);
        self.slow_ok_us.store(0, Ordering::Relaxed);
        self.set_failure_ratio(0.0);
        self.set_unhealthy(false);
        self.slow_paths.lock().clear();
    }

    /// Requests answered so far, health checks excluded.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Connections accepted so far: how often a proxy in front had to connect anew.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    fn delay_for(&self, path: &str) -> Duration {
        let mut d = Duration::from_micros(self.delay_us.load(Ordering::Relaxed));
        for (prefix, extra) in self.slow_paths.lock().iter() {
            if crate::matchers::path_has_prefix(path, prefix) {
                d += *extra;
            }
        }
        d
    }

    /// Deterministic spreading: request n fails when floor(n * ppm / 1e6) steps up.
    fn should_fail(&self, n: u64) -> bool {
        let ppm = self.fail_ppm.load(Ordering::Relaxed);
        ppm > 0 && (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000
    }
}

/// A running origin. Dropping it stops accepting and closes its connections.
pub struct Origin {
    pub name: String,
    pub addr: SocketAddr,
    pub behavior: Arc<Behavior>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Origin {
    /// Starts an origin on `addr` (port 0 for any free port) on the current tokio runtime.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Origin> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let behavior = Arc::new(Behavior::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let name_arc: Arc<str> = Arc::from(name);
        let b = behavior.clone();
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = stopped_accept.changed() => return,
                };
                let Ok((stream, _)) = conn else { continue };
                b.connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let (b, name, mut stopped) = (b.clone(), name_arc.clone(), stopped.clone());
                tokio::spawn(async move {
                    let keep_alive = !b.one_answer_per_connection.load(Ordering::Relaxed);
                    let svc = service_fn(move |req| answer(req, b.clone(), name.clone()));
                    let conn = http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        Ok(Origin {
            name: name.to_string(),
            addr,
            behavior,
            stop,
        })
    }

    /// Starts an origin on any free loopback port.
    pub async fn start_local(name: &str) -> std::io::Result<Origin> {
        Self::start(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }
}

async fn answer(
    req: Request<Incoming>,
    b: Arc<Behavior>,
    name: Arc<str>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().to_string();
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        // `x_` too: what a client sends as a lookalike of an `x-` header must show if it got through.
        if k.as_str().starts_with("x-") || k.as_str().starts_with("x_") || k == "traceparent" {
            headers.insert(
                k.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            );
        }
    }
    // Read the body so the connection can be reused; its size is echoed.
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().len())
        .unwrap_or(0);

    // Counted on arrival: a request the proxy gave up on while it was delayed was still seen.
    let n = (path != HEALTH_PATH).then(|| b.requests.fetch_add(1, Ordering::Relaxed));
    let delay = b.delay_for(&path);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = if let Some(n) = n {
        if b.should_fail(n) {
            b.failed.fetch_add(1, Ordering::Relaxed);
            503
        } else {
            let slow = Duration::from_micros(b.slow_ok_us.load(Ordering::Relaxed));
            if !slow.is_zero() {
                tokio::time::sleep(slow).await;
            }
            200
        }
    } else if b.unhealthy.load(Ordering::Relaxed) {
        503
    } else {
        200
    };
    let body = serde_json::json!({
        "origin": &*name,
        "method": method,
        "path": path,
        "status": status,
        "body_bytes": body_len,
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-origin", v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_spread_exactly() {
        let b = Behavior::default();
        b.set_failure_ratio(0.5);
        let fails: Vec<bool> = (0..6).map(|n| b.should_fail(n)).collect();
        assert_eq!(fails.iter().filter(|f| **f).count(), 3);
        assert!(fails.windows(2).all(|w| w[0] != w[1]));
        b.set_failure_ratio(0.1);
        assert_eq!((0..1000).filter(|&n| b.should_fail(n)).count(), 100);
        b.set_failure_ratio(0.0);
        assert!((0..1000).all(|n| !b.should_fail(n)));
    }

    #[test]
    fn slow_paths_add_up() {
        let b = Behavior::default();
        b.set_delay(Duration::from_millis(5));
        b.add_slow_path("/checkout", Duration::from_millis(100));
        assert_eq!(b.delay_for("/checkout/pay"), Duration::from_millis(105));
        assert_eq!(b.delay_for("/checkouts"), Duration::from_millis(5));
        b.reset();
        assert_eq!(b.delay_for("/checkout"), Duration::ZERO);
    }
}
