//! The `usher` command: run, check, reload, demo; and the process log (see [`logging`]).

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use usher::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "usher",
    version,
    about = "An experience-aware edge proxy on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `usher run` and `usher demo` write their log (to standard error).
#[derive(clap::Args, Clone, Copy)]
struct LogArgs {
    /// text: lines for people (coloured only on a terminal); json: one JSON object per line
    /// (timestamp, level, target, fields.message and the event's other fields), for log tools.
    #[arg(long, value_enum, default_value_t = logging::Format::Text)]
    log_format: logging::Format,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file. SIGHUP reloads it; SIGTERM and SIGINT stop
    /// gracefully (state saved); SIGQUIT hands over to a new process started with --upgrade.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Take the listening sockets over from a running usher (then send it SIGQUIT), and the
        /// state it writes on its way out.
        #[arg(long)]
        upgrade: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Ask the running usher to read its configuration file again, through its admin API.
    Reload {
        /// The configuration file; the running usher's admin address is read from it.
        #[arg(long, short)]
        config: PathBuf,
        /// The admin address, if not the file's `server.admin`.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// A file holding an operator token, when the admin API has tokens (or set
        /// USHER_ADMIN_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Validate a configuration file: exit 0, or list every error with its path.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start demo origins, usher in front of them and synthetic customers; Ctrl-C stops it all.
    Demo {
        /// Proxy listen address (default: config/demo.toml's).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin API address (default: config/demo.toml's).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Stop by itself after this long, e.g. "30s" (default: run until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// When the second demo origin browns out (default "30s").
        #[arg(long, value_parser = humantime::parse_duration)]
        brownout_after: Option<std::time::Duration>,
        #[command(flatten)]
        log: LogArgs,
    },
}

impl Command {
    fn log_format(&self) -> logging::Format {
        match self {
            Command::Run { log, .. } | Command::Demo { log, .. } => log.log_format,
            Command::Reload { .. } | Command::Check { .. } => logging::Format::Text,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let limiter = logging::init(cli.command.log_format());
    let code = match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("usher: {e:#}");
            ExitCode::from(1)
        }
    };
    limiter.report("before usher stopped");
    code
}

/// `usher reload`: checks the file here first, exactly as the running usher will (so a bad file is
/// refused with every error without asking anything), then asks the running usher (its admin
/// address from the run file it keeps in its state folder, else the file's) to read it again.
fn reload(
    config: &std::path::Path,
    admin: Option<SocketAddr>,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!(
                "reload refused: {} is not valid; the running configuration stays (nothing was sent)",
                config.display()
            );
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let running = usher::server::RunFile::read(&cfg.state.dir).filter(|r| r.alive());
    let admin = match (admin, running.and_then(|r| r.admin), cfg.server.admin) {
        (Some(a), _, _) | (None, Some(a), _) | (None, None, Some(a)) => a,
        (None, None, None) => anyhow::bail!(
            "{}: server.admin is off, and no running usher says where its admin API is; pass --admin",
            config.display()
        ),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt
        .block_on(async {
            let mut req = reqwest::Client::new()
                .post(format!("http://{admin}/reload"))
                .timeout(std::time::Duration::from_secs(60));
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            Ok::<_, reqwest::Error>((status, resp.text().await.unwrap_or_default()))
        })
        .with_context(|| format!("cannot reach usher's admin API on {admin}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if status == 200 {
        println!(
            "reloaded: generation {} (sha256 {})",
            v["generation"],
            v["sha256"].as_str().unwrap_or("?")
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "reload refused ({status}): {}",
        v["error"].as_str().unwrap_or(body.trim())
    );
    for e in v["errors"].as_array().into_iter().flatten() {
        eprintln!("  {}", e.as_str().unwrap_or_default());
    }
    Ok(ExitCode::from(2))
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} routes, {} pools, {} upstreams, {} tiers)",
                    config.display(),
                    cfg.routes.len(),
                    cfg.pools.len(),
                    cfg.upstreams.len(),
                    cfg.tiers.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errs) => {
                eprintln!("{}: {} error(s)", config.display(), errs.0.len());
                for e in &errs.0 {
                    eprintln!("  {e}");
                }
                Ok(ExitCode::from(2))
            }
        },
        Command::Run {
            config, upgrade, ..
        } => {
            // Absolute, so that /config says which file, a reload finds it whatever the cwd, and
            // the folders the file names resolve the same way at start and on every reload.
            let path = std::fs::canonicalize(&config).unwrap_or_else(|_| config.clone());
            let (cfg, text) = Config::load_with_text(&path)
                .map_err(|errs| anyhow::anyhow!("{} is not valid:\n{errs}", config.display()))?;
            let source =
                usher::engine::Source::of_text(Some(path), &text, usher::time::wall_ms(), "start");
            usher::server::run(cfg, source, upgrade).context("running usher")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload {
            config,
            admin,
            token_file,
        } => {
            let token = match token_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => std::env::var("USHER_ADMIN_TOKEN").ok(),
            };
            reload(&config, admin, token)
        }
        Command::Demo {
            listen,
            admin,
            duration,
            brownout_after,
            ..
        } => {
            usher::demo::run(usher::demo::DemoOptions {
                listen,
                admin,
                duration,
                brownout_after,
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The process log: `text` or `json` on standard error, filtered by `RUST_LOG` (default `info`).
///
/// Pingora logs through the `log` crate, and its per-connection lines ("Fail to proxy", downstream
/// and HTTP/2 handshake errors, ...) come at ERROR: one for every bad client. They reach this
/// subscriber through `tracing_log::LogTracer`, which `SubscriberInitExt::init` installs as the
/// `log` logger (tracing-subscriber's `tracing-log` feature), as events whose real target (the
/// Pingora module) is in their normalized metadata. So that a flood of bad clients cannot flood
/// the log, warnings and errors of any target that is not usher's own pass at most
/// [`FOREIGN_LINES_PER_SECOND`] a second per target; the rest are counted, and every
/// [`SUMMARY_EVERY`] (and when usher stops) one warning per target says how many were suppressed.
/// usher's own lines are never held back, nor other crates' info and debug lines (off by default,
/// and asked for by whoever turns them on). Each request's outcome is in the metrics and the
/// access log either way.
mod logging {
    use std::io::IsTerminal;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tracing::{Event, Level, Subscriber};
    use tracing_log::NormalizeEvent;
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;

    /// Warnings and errors let through per second, per target that is not usher's.
    pub const FOREIGN_LINES_PER_SECOND: u32 = 10;
    /// How often suppressed lines are summed up.
    pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
    pub enum Format {
        #[default]
        Text,
        Json,
    }

    /// Whether `target` is usher's own code (the library's modules, or this binary).
    fn is_ours(target: &str) -> bool {
        target == "usher" || target.starts_with("usher::")
    }

    #[derive(Default)]
    struct Window {
        /// Which second (since the limiter started) `lines` counts.
        second: u64,
        lines: u32,
        /// Held back since the last summary.
        suppressed: u64,
    }

    /// Counts lines per target in one-second windows. Targets are module paths of the code that
    /// logs, so the map is bounded by the code, not by traffic.
    #[derive(Default)]
    pub struct Limiter {
        by_target: parking_lot::Mutex<hashbrown::HashMap<String, Window>>,
    }

    impl Limiter {
        /// Whether a line from `target` in second `second` may be written.
        pub fn admit(&self, target: &str, second: u64) -> bool {
            let mut map = self.by_target.lock();
            let w = map.entry_ref(target).or_default();
            if w.second != second {
                w.second = second;
                w.lines = 0;
            }
            if w.lines < FOREIGN_LINES_PER_SECOND {
                w.lines += 1;
                true
            } else {
                w.suppressed += 1;
                false
            }
        }

        /// The lines held back since the last call, by target.
        pub fn take_suppressed(&self) -> Vec<(String, u64)> {
            let mut map = self.by_target.lock();
            let mut out: Vec<(String, u64)> = map
                .iter_mut()
                .filter(|(_, w)| w.suppressed > 0)
                .map(|(t, w)| (t.clone(), std::mem::take(&mut w.suppressed)))
                .collect();
            out.sort();
            out
        }

        /// One warning per target that had lines held back (`over`: "in the last 10s", ...).
        pub fn report(&self, over: &str) {
            for (target, n) in self.take_suppressed() {
                tracing::warn!(
                    source = %target,
                    suppressed = n,
                    "suppressed {n} log lines from {target} {over} (more than \
                     {FOREIGN_LINES_PER_SECOND} a second)"
                );
            }
        }
    }

    /// The layer that asks the limiter before an event goes to any other layer.
    struct RateLimit {
        limiter: Arc<Limiter>,
        start: Instant,
    }

    impl<S: Subscriber> Layer<S> for RateLimit {
        fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
            let normalized = event.normalized_metadata();
            let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
            if *meta.level() > Level::WARN || is_ours(meta.target()) {
                return true;
            }
            self.limiter
                .admit(meta.target(), self.start.elapsed().as_secs())
        }
    }

    /// Whether colour codes belong on standard error: only on a terminal, and never with
    /// `NO_COLOR` set (no-color.org).
    fn ansi() -> bool {
        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    }

    /// Installs the process log, with a thread that sums up suppressed lines every
    /// [`SUMMARY_EVERY`]. The limiter is returned for the last summary.
    pub fn init(format: Format) -> Arc<Limiter> {
        let limiter = Arc::new(Limiter::default());
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let base = tracing_subscriber::registry().with(filter).with(RateLimit {
            limiter: limiter.clone(),
            start: Instant::now(),
        });
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        match format {
            Format::Text => base.with(fmt.with_ansi(ansi())).init(),
            Format::Json => base.with(fmt.json().with_ansi(false)).init(),
        }
        let l = limiter.clone();
        let _ = std::thread::Builder::new()
            .name("usher-log-summary".into())
            .spawn(move || loop {
                std::thread::sleep(SUMMARY_EVERY);
                l.report(&format!("in the last {}s", SUMMARY_EVERY.as_secs()));
            });
        limiter
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn at_most_n_lines_a_second_per_target_and_the_rest_counted() {
            let l = Limiter::default();
            let passed = (0..100).filter(|_| l.admit("pingora_proxy", 7)).count();
            assert_eq!(passed, FOREIGN_LINES_PER_SECOND as usize);
            // Another target has its own allowance; the next second a fresh one.
            assert!(l.admit("pingora_core::services::listening", 7));
            assert!(l.admit("pingora_proxy", 8));
            assert_eq!(
                l.take_suppressed(),
                vec![("pingora_proxy".to_string(), 100 - passed as u64)]
            );
            assert!(l.take_suppressed().is_empty(), "counts are taken once");
        }

        #[test]
        fn usher_targets_are_ours_and_lookalikes_are_not() {
            assert!(is_ours("usher"));
            assert!(is_ours("usher::engine::reload"));
            assert!(!is_ours("usher_fake"));
            assert!(!is_ours("pingora_proxy"));
        }
    }
}
