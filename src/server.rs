//! Assembling and running a usher server: the proxy listeners, the admin API and the background
//! summary as one Pingora `Server`.
//!
//! [`run`] is `usher run`: it blocks and stops on SIGINT/SIGTERM. [`spawn`] runs the same server on a
//! thread of this process and returns a handle that stops it, for the demo and the tests.

use crate::admin::admin_service;
use crate::config::Config;
use crate::engine::Usher;
use crate::proxy::{UsherHooks, UsherProxy};
use crate::tasks::periodic_service;
use async_trait::async_trait;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it?")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start the server thread: {0}")]
    Thread(std::io::Error),
    #[error("usher did not start listening on {0} within {1:?}")]
    NotReady(SocketAddr, Duration),
}

/// Pingora reports a listener it cannot bind by panicking inside its service task, leaving the
/// process up but deaf. Binding each address once beforehand turns that into a clear error.
pub fn preflight(config: &Config) -> Result<(), StartError> {
    let admin = config.server.admin.map(|a| (a, "server.admin"));
    for (addr, what) in config
        .server
        .listen
        .iter()
        .map(|a| (*a, "server.listen"))
        .chain(admin)
    {
        TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, what, source })?;
    }
    Ok(())
}

fn pingora_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads,
        // Pingora waits the grace period, then gives its runtimes this long more: SIGTERM drains for
        // grace_period (rounded up to whole seconds) plus one second.
        grace_period_seconds: Some(config.server.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        // Retries are usher's decision, made per request in the proxy hooks: at most one on another
        // upstream and one on a stale pooled connection, so three attempts in all.
        max_retries: 3,
        // Pingora's 128 unless set: after a burst with more requests in flight, the extras'
        // connections are closed and later requests pay a new connect (and handshake), which
        // matters with far-away or TLS upstreams and bursty traffic.
        upstream_keepalive_pool_size: config.server.upstream_idle_connections,
        ..ServerConf::default()
    }
}

/// Builds the Pingora server for `usher` without starting it.
pub fn build(usher: Arc<Usher>) -> Server {
    let config = usher.config().clone();
    match crate::process::prepare() {
        Ok(p) => tracing::info!(
            open_files = p.limit,
            was = p.limit_before,
            fd_table = p.table,
            huge_pages_off = p.thp_off,
            "process readied: no fd-table growth or huge-page faults under load"
        ),
        Err(e) => tracing::warn!(
            "process not readied ({e}): the kernel may stall the proxy as connections grow"
        ),
    }
    let mut server = Server::new_with_opt_and_conf(None, pingora_conf(&config));
    server.bootstrap();
    let mut proxy = http_proxy_service_with_name(
        &server.configuration,
        UsherProxy::new(UsherHooks::new(usher.clone())),
        "usher proxy",
    );
    for addr in &config.server.listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    if let Some(addr) = config.server.admin {
        server.add_service(admin_service(usher.clone(), addr));
    }
    server.add_service(periodic_service(usher));
    server
}

/// Runs until SIGINT (fast) or SIGTERM (graceful, `server.grace_period`).
pub fn run(config: Config) -> Result<(), StartError> {
    preflight(&config)?;
    let usher = Usher::new(config);
    build(usher).run(RunArgs::default());
    Ok(())
}

struct ChannelSignal(tokio::sync::Mutex<tokio::sync::oneshot::Receiver<()>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.lock().await;
        // A dropped sender means the handle is gone: stop as well.
        let _ = (&mut *rx).await;
        ShutdownSignal::FastShutdown
    }
}

/// A usher server running on a thread of this process. Dropping it stops the server.
pub struct Running {
    usher: Arc<Usher>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    pub fn usher(&self) -> &Arc<Usher> {
        &self.usher
    }

    pub fn listen(&self) -> SocketAddr {
        self.usher.config().server.listen[0]
    }

    pub fn admin(&self) -> Option<SocketAddr> {
        self.usher.config().server.admin
    }

    /// Stops the server and waits for it to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a server for `config` on a new thread and waits until its listeners accept connections.
pub fn spawn(config: Config) -> Result<Running, StartError> {
    spawn_usher(Usher::new(config))
}

pub fn spawn_usher(usher: Arc<Usher>) -> Result<Running, StartError> {
    preflight(usher.config())?;
    let cfg = usher.config();
    let ready: Vec<SocketAddr> = cfg
        .server
        .listen
        .iter()
        .chain(cfg.server.admin.iter())
        .copied()
        .collect();
    spawn_server(build(usher.clone()), usher, &ready)
}

/// Runs any Pingora server (usher's own, or a proxy embedding usher) on a new thread until the
/// returned handle is stopped or dropped, and waits until every address in `ready` accepts.
pub fn spawn_server(
    server: Server,
    usher: Arc<Usher>,
    ready: &[SocketAddr],
) -> Result<Running, StartError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("usher-server".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(ChannelSignal(tokio::sync::Mutex::new(rx))),
            })
        })
        .map_err(StartError::Thread)?;
    let running = Running {
        usher,
        stop: Some(tx),
        thread: Some(thread),
    };
    for addr in ready {
        wait_listening(*addr, Duration::from_secs(10))?;
    }
    Ok(running)
}

/// Polls until `addr` accepts a TCP connection.
pub fn wait_listening(addr: SocketAddr, within: Duration) -> Result<(), StartError> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(StartError::NotReady(addr, within))
}
