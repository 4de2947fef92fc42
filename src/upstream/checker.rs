//! Active health checks: an HTTP GET of each member of a pool, every `interval`, judged 2xx/3xx,
//! over TLS for a TLS pool (verified as its requests are).
//!
//! One round checks every member concurrently, each bounded by the check's timeout; the rise/fall
//! rule is `active.rs`. The loop that repeats rounds is a background task (`crate::tasks`).

use super::PoolId;
use super::{HealthEvent, Upstreams};
use crate::settings::HealthCheck;

/// One member to check: a client set up for it and the URL of its check.
pub struct Target {
    pub client: reqwest::Client,
    pub url: String,
}

/// One check: true when it answers 2xx or 3xx within the timeout.
pub async fn check_once(t: &Target, check: &HealthCheck) -> bool {
    match tokio::time::timeout(check.timeout, t.client.get(&t.url).send()).await {
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
    targets: &[Target],
    check: &HealthCheck,
) -> Vec<HealthEvent> {
    let results = futures::future::join_all(targets.iter().map(|t| check_once(t, check))).await;
    results
        .into_iter()
        .enumerate()
        .filter_map(|(i, ok)| upstreams.record_check(pool, i, ok, check.rise, check.fall))
        .collect()
}
