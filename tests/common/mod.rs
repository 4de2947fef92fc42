//! Helpers shared by the integration tests: free loopback ports, configs, HTTP calls.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;
use usher::Config;

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().unwrap()
}

/// An address nothing listens on: bound, then released, so connections are refused.
pub fn dead_addr() -> SocketAddr {
    free_addr()
}

/// Parses a test config, with `[server]` filled in with fresh ports unless the text has its own.
pub fn config(text: &str, dir: &Path) -> Config {
    let text = if text.contains("[server]") {
        text.to_string()
    } else {
        format!(
            "[server]\nlisten = [\"{}\"]\nadmin = \"{}\"\n{text}",
            free_addr(),
            free_addr()
        )
    };
    Config::parse(&text, dir).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(8)
        .build()
        .unwrap()
}

pub async fn get(c: &reqwest::Client, url: String, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request reaches usher");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

pub async fn json(c: &reqwest::Client, url: String) -> serde_json::Value {
    let (status, body) = get(c, url.clone(), &[]).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// The value of one Prometheus sample line with exactly these labels (in any order).
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labelpart, value) = if let Some(r) = rest.strip_prefix('{') {
            let (l, v) = r.split_once("} ")?;
            (l, v)
        } else {
            ("", rest.strip_prefix(' ')?)
        };
        let have: Vec<&str> = if labelpart.is_empty() {
            vec![]
        } else {
            labelpart.split(',').collect()
        };
        let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        (have.len() == want.len() && want.iter().all(|w| have.contains(&w.as_str())))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// One simulated customer: a closed loop of requests with a short think time.
#[derive(Clone, Debug)]
pub struct Worker {
    pub customer: String,
    pub tier: Option<&'static str>,
    pub path: &'static str,
    pub protected: bool,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub at: std::time::Instant,
    pub latency: Duration,
    /// 0 when the request failed at the transport level.
    pub status: u16,
    pub origin: String,
    pub protected: bool,
}

/// Runs `workers` against `proxy` for `duration`; `think` between requests of one worker.
pub async fn load(
    proxy: SocketAddr,
    workers: &[Worker],
    duration: Duration,
    think: Duration,
) -> Vec<Sample> {
    let deadline = std::time::Instant::now() + duration;
    let tasks: Vec<_> = workers
        .iter()
        .cloned()
        .map(|w| {
            tokio::spawn(async move {
                let c = client();
                let mut out = Vec::new();
                while std::time::Instant::now() < deadline {
                    let mut req = c
                        .get(format!("http://{proxy}{}", w.path))
                        .header("x-customer-id", &w.customer);
                    if let Some(t) = w.tier {
                        req = req.header("x-customer-tier", t);
                    }
                    let at = std::time::Instant::now();
                    let (status, origin) = match req.send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            let o = r
                                .headers()
                                .get("x-origin")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let _ = r.bytes().await;
                            (s, o)
                        }
                        Err(_) => (0, String::new()),
                    };
                    out.push(Sample {
                        at,
                        latency: at.elapsed(),
                        status,
                        origin,
                        protected: w.protected,
                    });
                    tokio::time::sleep(think).await;
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Summary of a set of samples.
#[derive(Debug)]
pub struct Figures {
    pub n: usize,
    pub success: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

pub fn figures<'a>(samples: impl Iterator<Item = &'a Sample>) -> Figures {
    let mut lat: Vec<Duration> = Vec::new();
    let mut ok = 0;
    for s in samples {
        lat.push(s.latency);
        if (200..400).contains(&s.status) {
            ok += 1;
        }
    }
    lat.sort();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        n: lat.len(),
        success: if lat.is_empty() {
            0.0
        } else {
            ok as f64 / lat.len() as f64
        },
        p50: q(0.50),
        p99: q(0.99),
        max: lat.last().copied().unwrap_or_default(),
    }
}
