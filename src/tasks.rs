//! usher's periodic work, as one Pingora background service: the store summary behind the score
//! metrics, the passive-health sweep, active health checks, the event sinks, the events sweep
//! (abandoned funnels, burning objectives), and looking upstream host names up again. It follows
//! the generation in force: when a reload puts a new one in force, the checks and timers start
//! over on it (a check's rise/fall state lives in the upstream's node and carries over).
//!
//! At shutdown it is what makes a restart lose nothing: once Pingora has stopped accepting, it
//! waits for the requests in flight (returning as soon as they are done, at most
//! `server.grace_period`), lets every sink write out what it holds, writes the state snapshot,
//! and marks usher closed. Each job is a thin loop around a plain function of the engine, so
//! usher's binary and an embedding proxy add this service to their `Server` the same way.

use crate::defaults as d;
use crate::engine::{wall_ms, Generation, Usher};
use crate::snapshot;
use crate::upstream::checker;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Sinks get this long to write out what they hold once usher closes.
const SINKS_CLOSE: Duration = Duration::from_secs(10);

pub struct Periodic {
    usher: Arc<Usher>,
}

/// Starts every pool's active health checks on generation `g`.
fn spawn_checks(usher: &Arc<Usher>, g: &Arc<Generation>) -> Vec<JoinHandle<()>> {
    g.config
        .pools
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let check = p.health_check.clone()?;
            let addrs: Vec<SocketAddr> = p
                .upstreams
                .iter()
                .map(|u| g.config.upstreams[*u as usize])
                .collect();
            let targets: Vec<checker::Target> = addrs
                .iter()
                .map(|a| check_target(*a, p.tls.as_ref(), &check))
                .collect();
            let (usher, g) = (usher.clone(), g.clone());
            Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(check.interval);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    for e in checker::round(g.upstreams(), i as u16, &targets, &check).await {
                        usher.health_event(&g, e);
                    }
                }
            }))
        })
        .collect()
}

/// How `addr` is checked: plainly, or over TLS as its pool's requests go (its name, its CA, its
/// client certificate), connecting to `addr` whatever the name resolves to.
fn check_target(
    addr: SocketAddr,
    tls: Option<&crate::config::UpstreamTls>,
    check: &crate::settings::HealthCheck,
) -> checker::Target {
    let builder = reqwest::Client::builder()
        .timeout(check.timeout)
        .pool_max_idle_per_host(1);
    let Some(t) = tls else {
        return checker::Target {
            client: builder.build().unwrap_or_default(),
            url: format!("http://{addr}{}", check.path),
        };
    };
    let mut b = builder.resolve(&t.sni, addr);
    if let Some(pem) = &t.ca_pem {
        b = b.tls_built_in_root_certs(false);
        for c in reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default() {
            b = b.add_root_certificate(c);
        }
    }
    if let Some(id) = t
        .client
        .as_ref()
        .and_then(|c| reqwest::Identity::from_pem(&c.pem).ok())
    {
        b = b.identity(id);
    }
    checker::Target {
        client: b.build().unwrap_or_default(),
        url: format!("https://{}:{}{}", t.sni, addr.port(), check.path),
    }
}

fn every(d: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(d);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

#[async_trait]
impl BackgroundService for Periodic {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let usher = self.usher.clone();
        let sinks = {
            let usher = usher.clone();
            tokio::spawn(async move { usher.state().events.run().await })
        };
        let mut generations = usher.generations();
        'generation: loop {
            generations.borrow_and_update();
            let g = usher.generation();
            let st = usher.state();
            st.proxy_connections
                .publish_limit(g.config.server.connections.max);
            st.admin_connections.publish_limit(d::ADMIN_MAX_CONNECTIONS);
            let checks = spawn_checks(&usher, &g);
            let mut summary = every(g.config.experience.summary_interval);
            let mut sweep = every(g.config.sweep_interval);
            let mut events = every(Duration::from_secs(1));
            let resolve_every = g
                .config
                .pools
                .iter()
                .filter(|p| {
                    p.specs
                        .iter()
                        .any(|s| matches!(s, crate::config::UpstreamSpec::Name { .. }))
                })
                .map(|p| p.resolve_interval)
                .min();
            let mut resolve = every(resolve_every.unwrap_or(Duration::from_secs(3600)));
            resolve.reset();
            drop(g);
            let stop = loop {
                tokio::select! {
                    _ = events.tick() => {
                        let now_ms = wall_ms();
                        usher.sweep_events(now_ms);
                        usher.refresh_try_timeouts(now_ms);
                    }
                    _ = summary.tick() => {
                        let u = usher.clone();
                        // A scan of a million customers takes milliseconds: not on the reactor.
                        let _ = tokio::task::spawn_blocking(move || {
                            let trimmed = u.state().store.trim();
                            u.state().metrics.customers_evicted.inc_by(trimmed as u64);
                            u.refresh_summary(wall_ms());
                        }).await;
                        // Seconds at a million customers: not waited for here, so that sweeps,
                        // reloads and a shutdown go on meanwhile (the shutdown's own snapshot
                        // waits its turn for the file).
                        if usher.state().retention_forgot.load(std::sync::atomic::Ordering::Acquire) {
                            let u = usher.clone();
                            tokio::task::spawn_blocking(move || {
                                if let Some(crate::snapshot::AfterErasure::Rewritten) =
                                    crate::snapshot::rewrite_after_retention(&u, wall_ms())
                                {
                                    tracing::info!("state snapshot written again without the customers retention forgot");
                                }
                            });
                        }
                    }
                    _ = sweep.tick() => usher.sweep(Instant::now()),
                    _ = resolve.tick(), if resolve_every.is_some() => {
                        let usher = usher.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            usher.re_resolve(&mut crate::config::system_resolve)
                        }).await;
                    }
                    _ = generations.changed() => break false,
                    _ = shutdown.changed() => break true,
                }
            };
            for c in checks {
                c.abort();
            }
            if stop {
                break 'generation;
            }
        }
        close(&usher, sinks).await;
    }
}

/// How long nothing must be in flight or open before usher's end goes on.
const DRAIN_QUIET: Duration = Duration::from_millis(50);

/// The end of usher: waits for the requests in flight and the connections still open (at most
/// the grace period), closes the
/// sinks and waits for them to write out what they hold, writes the snapshot, marks usher closed.
pub async fn close(usher: &Arc<Usher>, sinks: JoinHandle<()>) {
    let started = Instant::now();
    let grace = usher.generation().config.server.grace_period;
    // A connection accepted just before the listeners stopped may hold a request that is not
    // admitted yet (its head still being read), or may not even be counted yet (its task not run
    // yet): not in flight, but it will be served and must be on record before the snapshot, and
    // served before the process ends. So: until nothing is in flight and no connection is open
    // for a quiet spell. Pingora closes idle connections at shutdown, and a runtime with nothing
    // admitted is idle, so a freshly accepted connection is counted well within the spell.
    let busy = || usher.state().in_flight() + usher.state().proxy_connections.open() as u64;
    let mut quiet_since: Option<Instant> = None;
    while started.elapsed() < grace {
        if busy() > 0 {
            quiet_since = None;
        } else if quiet_since.get_or_insert_with(Instant::now).elapsed() >= DRAIN_QUIET {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (left, open) = (
        usher.state().in_flight(),
        usher.state().proxy_connections.open(),
    );
    if left + open as u64 > 0 {
        tracing::warn!(
            in_flight = left,
            connections = open,
            "grace period over with requests still in flight"
        );
    } else {
        tracing::info!(
            after_ms = started.elapsed().as_millis() as u64,
            "requests in flight are done"
        );
    }
    usher.state().events.close();
    if tokio::time::timeout(SINKS_CLOSE, sinks).await.is_err() {
        tracing::error!("event sinks did not finish writing out within {SINKS_CLOSE:?}");
    }
    save(usher).await;
    {
        // The access log's last lines, after what matters more is safe: a log nobody reads (a
        // stalled pipe) must not keep the snapshot from being written, nor the process alive.
        let u = usher.clone();
        let closing = tokio::task::spawn_blocking(move || u.state().access_log.close());
        if tokio::time::timeout(SINKS_CLOSE, closing).await.is_err() {
            tracing::error!("the access log did not finish writing out within {SINKS_CLOSE:?}");
        }
    }
    usher.mark_closed();
}

/// Writes the snapshot, logging the outcome.
pub async fn save(usher: &Arc<Usher>) {
    let path = snapshot::path_of(usher);
    if !usher.state().owns_state_dir() {
        tracing::error!(path = %path.display(), "not writing the state snapshot: the state folder is still another process's");
        return;
    }
    let u = usher.clone();
    let written = tokio::task::spawn_blocking(move || snapshot::write(&u, &path)).await;
    match written {
        Ok(Ok(w)) => {
            usher.state().metrics.snapshot("write", "success");
            tracing::info!(
                path = %w.path.display(),
                customers = w.customers,
                bytes = w.bytes,
                took_ms = w.took.as_millis() as u64,
                "state snapshot written"
            );
        }
        Ok(Err(e)) => {
            usher.state().metrics.snapshot("write", "failure");
            tracing::error!(path = %snapshot::path_of(usher).display(), "cannot write the state snapshot: {e}");
        }
        Err(e) => tracing::error!("state snapshot task failed: {e}"),
    }
}

/// Store summary every `experience.summary_interval`, outlier sweep every `outlier.sweep_interval`,
/// each pool's `health_check`, the sinks, and the orderly end at shutdown.
pub fn periodic_service(usher: Arc<Usher>) -> GenBackgroundService<Periodic> {
    background_service("usher periodic", Periodic { usher })
}

/// For tests and tools: how long until every periodic job has run at least once.
pub fn first_round_within(usher: &Usher) -> Duration {
    let g = usher.generation();
    let cfg = &g.config;
    cfg.experience.summary_interval.max(cfg.sweep_interval).max(
        cfg.pools
            .iter()
            .filter_map(|p| p.health_check.as_ref().map(|h| h.interval))
            .max()
            .unwrap_or_default(),
    )
}
