//! `usher demo`: usher's main job on an embedded default, with nothing to set up.
//!
//! Starts three demo origins on loopback (the third is slow on `/checkout`), usher in front of them with
//! `config/demo.toml` (embedded in the binary), and a handful of synthetic customers of different
//! tiers walking through a shop; prints the admin URLs and, every few seconds, who is suffering.
//! Ctrl-C (or `--duration`) stops all of it.

mod traffic;

use crate::config::{Config, ConfigErrors};
use crate::engine::wall_ms;
use crate::origin::Origin;
use crate::server::{self, StartError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use traffic::{Customer, CUSTOMERS};

pub const DEMO_TOML: &str = include_str!("../../config/demo.toml");
pub const DEMO_CUSTOMERS_CSV: &str = include_str!("../../config/demo-customers.csv");

/// Extra latency of the third origin on `/checkout`: well past 4 x the route's 300 ms target.
pub const SLOW_CHECKOUT: Duration = Duration::from_millis(1500);

#[derive(Debug, Default, Clone)]
pub struct DemoOptions {
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub duration: Option<Duration>,
    /// When the second origin browns out (default 30 s after start).
    pub brownout_after: Option<Duration>,
}

/// The demo's brownout: half the answers 503 at once, the other half this late; health check green.
pub const BROWNOUT_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the embedded demo configuration is invalid (a bug):\n{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("demo setup failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes the embedded demo files to a fresh folder and loads them, as `usher run` would.
pub fn demo_config(dir: &std::path::Path) -> Result<Config, DemoError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("demo.toml"), DEMO_TOML)?;
    std::fs::write(dir.join("demo-customers.csv"), DEMO_CUSTOMERS_CSV)?;
    Ok(Config::load(&dir.join("demo.toml"))?)
}

pub fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let dir: PathBuf = std::env::temp_dir().join(format!("usher-demo-{}", std::process::id()));
    let mut config = demo_config(&dir)?;
    if let Some(l) = opts.listen {
        config.server.listen = vec![l];
    }
    if let Some(a) = opts.admin {
        config.server.admin = Some(a);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let origins = rt.block_on(async {
        let mut v = Vec::new();
        for i in 1..=config.upstreams.len() {
            v.push(Origin::start_local(&format!("web-{i}")).await?);
        }
        Ok::<_, std::io::Error>(v)
    })?;
    if let Some(slow) = origins.last() {
        slow.behavior.add_slow_path("/checkout", SLOW_CHECKOUT);
    }
    for (slot, o) in config.upstreams.iter_mut().zip(&origins) {
        *slot = o.addr;
    }
    println!("usher demo: starting {} demo origins:", origins.len());
    for o in &origins {
        println!("  {} on {}", o.name, o.addr);
    }
    if let Some(o) = origins.last() {
        println!(
            "  ({} adds {:?} to every /checkout answer)",
            o.name, SLOW_CHECKOUT
        );
    }

    let running = server::spawn(config)?;
    let listen = running.listen();
    println!("usher demo: proxy on http://{listen}/");
    if let Some(a) = running.admin() {
        println!("usher demo: open the admin API:");
        println!("  curl http://{a}/customers?worst=5");
        println!("  curl http://{a}/customers/alice");
        println!("  curl http://{a}/routes");
        println!("  curl http://{a}/upstreams");
        println!("  curl http://{a}/metrics");
    }
    println!(
        "usher demo: {} synthetic customers browsing; Ctrl-C stops.",
        CUSTOMERS.len()
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = rt.spawn(traffic::run(listen, stop_rx));
    let brownout_after = opts.brownout_after.unwrap_or(Duration::from_secs(30));
    if let Some(o) = origins.get(1) {
        println!(
            "usher demo: in {brownout_after:?}, {} browns out: half its answers 503, the rest {BROWNOUT_DELAY:?} late, its health check still green",
            o.name
        );
        let (b, name) = (o.behavior.clone(), o.name.clone());
        let admin = running.admin();
        rt.spawn(async move {
            tokio::time::sleep(brownout_after).await;
            b.set_brownout(0.5, BROWNOUT_DELAY);
            println!("usher demo: {name} browns out now");
            if let Some(a) = admin {
                println!("  watch it being ejected:    curl http://{a}/upstreams");
                println!("  protected customers fine:  curl http://{a}/customers/alice");
            }
        });
    }
    let usher = running.usher().clone();
    rt.block_on(async {
        let deadline = async {
            match opts.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut report = tokio::time::interval(Duration::from_secs(10));
        report.tick().await;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = &mut deadline => break,
                _ = report.tick() => print_worst(&usher),
            }
        }
    });
    println!("usher demo: stopping");
    let _ = stop_tx.send(true);
    let _ = rt.block_on(traffic);
    print_worst(&usher);
    running.stop();
    drop(origins);
    rt.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn print_worst(usher: &crate::Usher) {
    let now = wall_ms();
    let worst = usher
        .store()
        .worst(3, usher.config().experience.min_requests, now);
    let line: Vec<String> = worst
        .iter()
        .map(|c| {
            let last = c
                .journey
                .last()
                .map(|s| format!(", last {} {} {}", s.method(), s.path().0, s.status()))
                .unwrap_or_default();
            format!(
                "{} {:.0}{}{}",
                c.id,
                c.score,
                if usher.is_degraded(c.score) {
                    " DEGRADED"
                } else {
                    ""
                },
                last
            )
        })
        .collect();
    println!(
        "usher demo: {} customers tracked; worst now: {}",
        usher.store().len(),
        line.join(" | ")
    );
}
