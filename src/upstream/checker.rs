//! Active health checks: an HTTP GET of each member of a pool, every `interval`, judged 2xx/3xx.
//!
//! One round checks every member concurrently, each bounded by the check's timeout; the rise/fall
//! rule is `active.rs`. The loop that repeats rounds is a background task (`crate::tasks`).

use super::PoolId;
use super::{HealthEvent, Upstreams};
use crate::settings::HealthCheck;
use std::net::SocketAddr;

/// One check of `addr`: true when it answers 2xx or 3xx within the timeout.
pub async fn check_once(client: &reqwest::Client, addr: SocketAddr, check: &HealthCheck) -> bool {
    let url = format!("http://{addr}{}", check.path);
    match tokio::time::timeout(check.timeout, client.get(url).send()).await {
        Ok(Ok(resp)) => {
            let s = resp.status();
            s.is_success() || s.is_redirection()
        }
        _ => false,
    }
}

/// Checks every member of `pool` once, concurrently, and records the results; returns the changes.
pub async fn round(
    upstreams: &Upstreams,
    pool: PoolId,
    addrs: &[SocketAddr],
    check: &HealthCheck,
    client: &reqwest::Client,
) -> Vec<HealthEvent> {
    let results =
        futures::future::join_all(addrs.iter().map(|a| check_once(client, *a, check))).await;
    results
        .into_iter()
        .enumerate()
        .filter_map(|(i, ok)| upstreams.record_check(pool, i, ok, check.rise, check.fall))
        .collect()
}
