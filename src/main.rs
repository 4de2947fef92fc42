//! The `usher` command: run, check, demo.

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
    /// Run the proxy with a configuration file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
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
        Command::Run { config } => {
            let cfg = Config::load(&config)
                .map_err(|errs| anyhow::anyhow!("{} is not valid:\n{errs}", config.display()))?;
            usher::server::run(cfg).context("starting usher")?;
            Ok(ExitCode::SUCCESS)
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
