//! usher's periodic work, as Pingora background services: the store summary behind the score
//! metrics, the passive-health sweep, active health checks, the event sinks and the events sweep
//! (abandoned funnels, burning objectives).
//!
//! Each is a thin loop around a plain function of the engine, so usher's binary and an embedding
//! proxy add them to their `Server` the same way, and tests call the functions directly.

use crate::engine::{wall_ms, Usher};
use crate::upstream::checker;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Periodic {
    usher: Arc<Usher>,
}

#[async_trait]
impl BackgroundService for Periodic {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let cfg = self.usher.config();
        let mut summary = tokio::time::interval(cfg.experience.summary_interval);
        let mut sweep = tokio::time::interval(cfg.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let checks: Vec<_> = cfg
            .pools
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let check = p.health_check.clone()?;
                let addrs: Vec<SocketAddr> = p.upstreams.iter().map(|u| cfg.upstreams[*u as usize]).collect();
                let usher = self.usher.clone();
                let mut stop = shutdown.clone();
                Some(tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(check.timeout)
                        .pool_max_idle_per_host(1)
                        .build()
                        .unwrap_or_default();
                    let mut tick = tokio::time::interval(check.interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {
                                for e in checker::round(usher.upstreams(), i as u16, &addrs, &check, &client).await {
                                    usher.health_event(e);
                                }
                            }
                            _ = stop.changed() => return,
                        }
                    }
                }))
            })
            .collect();
        let sinks = {
            let usher = self.usher.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { usher.events().run(&usher.metrics().events, stop).await })
        };
        let mut events = tokio::time::interval(Duration::from_secs(1));
        events.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = events.tick() => {
                    let now_ms = wall_ms();
                    self.usher.sweep_events(now_ms);
                    self.usher.refresh_try_timeouts(now_ms);
                }
                _ = summary.tick() => {
                    let usher = self.usher.clone();
                    // A scan of a million customers takes milliseconds: not on the reactor.
                    let _ = tokio::task::spawn_blocking(move || usher.refresh_summary(wall_ms())).await;
                }
                _ = sweep.tick() => self.usher.sweep(Instant::now()),
                _ = shutdown.changed() => break,
            }
        }
        for c in checks {
            c.abort();
        }
        // Sinks saw the same shutdown: let them write what is queued to their files and spools.
        let _ = tokio::time::timeout(Duration::from_secs(5), sinks).await;
    }
}

/// Store summary every `experience.summary_interval`, outlier sweep every `outlier.sweep_interval`,
/// and each pool's `health_check`.
pub fn periodic_service(usher: Arc<Usher>) -> GenBackgroundService<Periodic> {
    background_service("usher periodic", Periodic { usher })
}

/// For tests and tools: how long until every periodic job has run at least once.
pub fn first_round_within(usher: &Usher) -> Duration {
    let cfg = usher.config();
    cfg.experience.summary_interval.max(cfg.sweep_interval).max(
        cfg.pools
            .iter()
            .filter_map(|p| p.health_check.as_ref().map(|h| h.interval))
            .max()
            .unwrap_or_default(),
    )
}
