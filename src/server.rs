//! Assembling and running a usher server: the proxy listeners, the admin API and the periodic work
//! as one Pingora `Server`, and the life of the `usher run` process around it.
//!
//! [`run`] is `usher run`: it loads the snapshot, serves, reloads on SIGHUP, and on SIGTERM or
//! SIGINT stops accepting, drains, writes out events and state and exits as soon as that is done.
//! SIGQUIT hands the listening sockets to a new process started with `usher run --upgrade`
//! (Pingora's graceful upgrade), which takes over the state the old one writes on its way out.
//! [`spawn`] runs the same server on a thread of this process and returns a handle that stops it,
//! for the demo and the tests.

use crate::admin::admin_service;
use crate::config::Config;
use crate::engine::{Source, Usher};
use crate::proxy::{UsherHooks, UsherProxy};
use crate::snapshot;
use crate::tasks::periodic_service;
use async_trait::async_trait;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What usher's orderly end may take beyond the grace period: sinks writing out what they hold,
/// then the snapshot (seconds at a million customers). Pingora's own wait is the sum; `usher run`
/// exits as soon as the end is done.
const CLOSE_BUDGET_SECS: u64 = 60;
/// How long a new process started with `--upgrade` waits for the old one to hand over its
/// listening sockets (after which it gives up and exits).
const UPGRADE_WAIT_SECS: usize = 60;
/// The upgrade socket's name in `state.dir`.
pub const UPGRADE_SOCK: &str = "upgrade.sock";

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
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
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
        // Pingora sleeps this long after it stops accepting, then stops its runtimes; usher's own
        // end (crate::tasks::close) waits for the requests in flight at most grace_period and must
        // then still write out events and state inside Pingora's wait.
        grace_period_seconds: Some(
            config.server.grace_period.as_secs_f64().ceil() as u64 + CLOSE_BUDGET_SECS,
        ),
        graceful_shutdown_timeout_seconds: Some(1),
        // Retries are usher's decision, made per request in the proxy hooks: at most one on another
        // upstream and one on a stale pooled connection, so three attempts in all.
        max_retries: 3,
        // Pingora's 128 unless set: after a burst with more requests in flight, the extras'
        // connections are closed and later requests pay a new connect (and handshake), which
        // matters with far-away or TLS upstreams and bursty traffic.
        upstream_keepalive_pool_size: config.server.upstream_idle_connections,
        upgrade_sock: config
            .state
            .dir
            .join(UPGRADE_SOCK)
            .to_string_lossy()
            .into_owned(),
        upgrade_sock_connect_accept_max_retries: Some(UPGRADE_WAIT_SECS),
        ..ServerConf::default()
    }
}

/// Builds the Pingora server for `usher` without starting it. With `upgrade`, this blocks until
/// the running usher hands over its listening sockets (send it SIGQUIT).
pub fn build(usher: Arc<Usher>, upgrade: bool) -> Server {
    let config = usher.generation().config.clone();
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
    if upgrade {
        let _ = std::fs::create_dir_all(&config.state.dir);
    }
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), pingora_conf(&config));
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

/// Loads the snapshot in `usher`'s state folder, if there is one; a snapshot that cannot be used
/// is reported and left alone (never fatal).
pub fn load_snapshot(usher: &Usher) {
    let path = snapshot::path_of(usher);
    if !path.exists() {
        tracing::info!(path = %path.display(), "no state snapshot: starting fresh");
        return;
    }
    load_snapshot_from(usher, &path);
}

fn load_snapshot_from(usher: &Usher, path: &Path) {
    match snapshot::load(usher, path) {
        Ok(l) => {
            usher.state().metrics.snapshot("read", "success");
            tracing::info!(
                path = %path.display(),
                customers = l.customers,
                funnels = l.funnels,
                cooldowns = l.cooldowns,
                upstreams = l.upstreams,
                written = %crate::time::rfc3339(l.written_ms),
                by_pid = l.pid,
                took_ms = l.took.as_millis() as u64,
                "state snapshot loaded"
            );
        }
        Err(e) => {
            usher.state().metrics.snapshot("read", "failure");
            tracing::error!(path = %path.display(), "state snapshot ignored, starting without it: {e}");
        }
    }
}

/// After a graceful upgrade: the old process writes its state when it has drained, after this one
/// started. Wait for that snapshot and merge it in; if it never comes, take what is there.
fn take_over_snapshot(usher: &Usher, started_ms: u64, within: Duration) {
    let path = snapshot::path_of(usher);
    let me = std::process::id();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some((written_ms, pid)) = snapshot::written_by(&path) {
            if pid != me && written_ms >= started_ms {
                tracing::info!(old_pid = pid, "the old process's state arrived");
                load_snapshot_from(usher, &path);
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::warn!(path = %path.display(), "no state from the old process within {within:?}: taking the last snapshot");
    if path.exists() {
        load_snapshot_from(usher, &path);
    }
}

/// Pingora's signals, with SIGINT as graceful as SIGTERM: a Ctrl-C should not lose state either.
struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot watch for signals: stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing the listening sockets to the new process");
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::GracefulTerminate,
        }
    }
}

/// `usher run`: serves until SIGTERM or SIGINT (graceful; a second SIGINT exits at once) or SIGQUIT
/// (graceful upgrade), reloading on SIGHUP. Returns once requests are drained, events written
/// out and state saved.
pub fn run(config: Config, source: Source, upgrade: bool) -> Result<(), StartError> {
    if !upgrade {
        preflight(&config)?;
    }
    let started_ms = crate::time::wall_ms();
    let usher = Usher::with_source(config, source, Instant::now());
    if !upgrade {
        load_snapshot(&usher);
    }
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Signals)?;
    // Signal handlers before anything can send one: SIGHUP's default is to kill the process.
    let (mut hup, mut int) = control
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::hangup())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .map_err(StartError::Signals)?;
    let server = build(usher.clone(), upgrade);
    if upgrade {
        tracing::info!("listening sockets taken over from the old process");
        let u = usher.clone();
        let within =
            u.generation().config.server.grace_period + Duration::from_secs(CLOSE_BUDGET_SECS + 10);
        std::thread::spawn(move || take_over_snapshot(&u, started_ms, within));
    }
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("usher-server".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(Signals),
            });
            let _ = done_tx.send(());
        })
        .map_err(StartError::Thread)?;
    let mut closed = usher.closed();
    control.block_on(async {
        let mut interrupts = 0;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let u = usher.clone();
                    let _ = tokio::task::spawn_blocking(move || u.reload()).await;
                }
                _ = int.recv() => {
                    interrupts += 1;
                    if interrupts > 1 {
                        tracing::warn!("second SIGINT: exiting without waiting");
                        std::process::exit(130);
                    }
                }
                _ = closed.wait_for(|c| *c) => break,
                _ = &mut done_rx => break,
            }
        }
    });
    tracing::info!("usher stopped");
    Ok(())
}

struct ChannelSignal(tokio::sync::Mutex<tokio::sync::oneshot::Receiver<ShutdownSignal>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.lock().await;
        // A dropped sender means the handle is gone: stop as well.
        (&mut *rx).await.unwrap_or(ShutdownSignal::FastShutdown)
    }
}

/// A usher server running on a thread of this process. Dropping it stops the server.
pub struct Running {
    usher: Arc<Usher>,
    stop: Option<tokio::sync::oneshot::Sender<ShutdownSignal>>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    pub fn usher(&self) -> &Arc<Usher> {
        &self.usher
    }

    pub fn listen(&self) -> SocketAddr {
        self.usher.generation().config.server.listen[0]
    }

    pub fn admin(&self) -> Option<SocketAddr> {
        self.usher.generation().config.server.admin
    }

    /// Stops the server at once and waits for it to finish: no drain, no snapshot.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops as `usher run` does on SIGTERM: stops accepting, waits for the requests in flight,
    /// writes out events and the snapshot. Returns once that is done (Pingora's thread is left to
    /// finish its own wait in the background).
    pub fn stop_gracefully(mut self) {
        let closed = self.usher.closed();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(ShutdownSignal::GracefulTerminate);
        }
        // Polled, so that this works from inside an async runtime as well as outside one.
        while !*closed.borrow() && self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.thread.take();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(ShutdownSignal::FastShutdown);
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

/// As [`spawn`], for a usher made (and possibly given a snapshot) by the caller.
pub fn spawn_usher(usher: Arc<Usher>) -> Result<Running, StartError> {
    let g = usher.generation();
    preflight(&g.config)?;
    let ready: Vec<SocketAddr> = g
        .config
        .server
        .listen
        .iter()
        .chain(g.config.server.admin.iter())
        .copied()
        .collect();
    drop(g);
    spawn_server(build(usher.clone(), false), usher, &ready)
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
