//! `usher demo`: usher's main job on an embedded default, with nothing to set up.
//!
//! Starts demo origins on loopback (three web origins, the third slow on `/checkout`, the second
//! browning out partway; a payment provider that fails some payments), usher in front of them with
//! `config/demo.toml` (embedded in the binary), and a handful of synthetic customers of different
//! tiers walking through a shop; prints the admin URLs and, every few seconds, who is suffering.
//! Ctrl-C or SIGTERM (or `--duration`) stops all of it.

mod traffic;

use crate::config::{Config, ConfigErrors};
use crate::engine::wall_ms;
use crate::origin::Origin;
use crate::server::{self, StartError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use traffic::{everyone, Customer, CUSTOMERS};

pub const DEMO_TOML: &str = include_str!("../../config/demo.toml");
pub const DEMO_CUSTOMERS_CSV: &str = include_str!("../../config/demo-customers.csv");

/// Extra latency of the third origin on `/checkout`: well past 4 x the route's 300 ms target.
pub const SLOW_CHECKOUT: Duration = Duration::from_millis(1500);

/// Extra latency of every web origin on `/api/orders/export`: past 4 x the `api` route's 200 ms
/// target, and the same everywhere, so routing cannot help and the customer degrades.
pub const SLOW_EXPORT: Duration = Duration::from_millis(1000);

/// Share of payments the demo's payment provider fails.
pub const PAYMENT_FAILURES: f64 = 0.3;

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
    // Watched from before anything starts, by one listener for the demo's whole life: a Ctrl-C
    // sent while the demo is still starting, or between two reports, must not be lost.
    let (mut interrupt, mut terminate) = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    // One origin per upstream, named after its pool: web-1..3 and payments-1.
    let written: Vec<SocketAddr> = config.upstreams.clone();
    let names: Vec<String> = written
        .iter()
        .enumerate()
        .map(|(u, _)| {
            let pool = config
                .pools
                .iter()
                .find(|p| p.upstreams.contains(&(u as u16)))
                .map_or("origin", |p| p.name.as_str());
            let nth = config
                .pools
                .iter()
                .find_map(|p| p.upstreams.iter().position(|x| *x == u as u16))
                .unwrap_or(0);
            format!("{pool}-{}", nth + 1)
        })
        .collect();
    let origins = rt.block_on(async {
        let mut v = Vec::new();
        for name in &names {
            v.push(Origin::start_local(name).await?);
        }
        Ok::<_, std::io::Error>(v)
    })?;
    let find = |name: &str| origins.iter().find(|o| o.name == name);
    if let Some(slow) = find("web-3") {
        slow.behavior.add_slow_path("/checkout", SLOW_CHECKOUT);
    }
    for web in origins.iter().filter(|o| o.name.starts_with("web-")) {
        web.behavior
            .add_slow_path("/api/orders/export", SLOW_EXPORT);
    }
    if let Some(pay) = find("payments-1") {
        pay.behavior.set_failure_ratio(PAYMENT_FAILURES);
    }
    for (old, o) in written.iter().zip(&origins) {
        config.replace_upstream(*old, o.addr);
    }
    println!("usher demo: starting {} demo origins:", origins.len());
    for o in &origins {
        println!("  {} on {}", o.name, o.addr);
    }
    println!("  (web-3 adds {SLOW_CHECKOUT:?} to every /checkout answer; every web origin adds {SLOW_EXPORT:?} to /api/orders/export; payments-1 fails {:.0}% of payments)", PAYMENT_FAILURES * 100.0);
    let events_file = config.events.sinks.iter().find_map(|s| match &s.kind {
        crate::config::SinkKind::Jsonl { path, .. } => Some(path.clone()),
        _ => None,
    });

    let running = server::spawn(config)?;
    let listen = running.listen();
    println!("usher demo: proxy on http://{listen}/");
    if let Some(a) = running.admin() {
        println!("usher demo: the live page: http://{a}/ui (no token needed on loopback)");
        println!("usher demo: open the admin API:");
        println!("  curl http://{a}/customers?worst=5");
        println!("  curl http://{a}/customers/alice");
        println!("  curl http://{a}/routes");
        println!("  curl http://{a}/upstreams");
        println!("  curl http://{a}/metrics");
    }
    println!(
        "usher demo: {} synthetic customers browsing; Ctrl-C stops.",
        everyone().len()
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = rt.spawn(traffic::run(listen, stop_rx));
    if let Some(f) = &events_file {
        println!(
            "usher demo: follow-up events are written to {}",
            f.display()
        );
        println!("  (a customer who gives up after a payment error shows up as usher.customer.journey_abandoned)");
    }
    let brownout_after = opts.brownout_after.unwrap_or(Duration::from_secs(30));
    if let Some(o) = find("web-2") {
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
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
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
    if let Some(f) = &events_file {
        // The events are what the demo leaves behind; the rest of its folder can go.
        println!("usher demo: events kept in {}", f.display());
        let _ = std::fs::remove_file(dir.join("demo.toml"));
        let _ = std::fs::remove_file(dir.join("demo-customers.csv"));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn print_worst(usher: &crate::Usher) {
    let now = wall_ms();
    let g = usher.generation();
    let st = usher.state();
    let worst = st.store.worst(
        3,
        g.config.experience.min_requests,
        now,
        &g.store_settings().model,
    );
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
                if g.is_degraded(c.score, c.requests) {
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
        st.store.len(),
        line.join(" | ")
    );
}
