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
