//! The `usher` command: run, check, reload, demo.

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
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("usher: {e:#}");
            ExitCode::from(1)
        }
    }
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
        Command::Run { config, upgrade } => {
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
