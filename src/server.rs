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
use crate::transport::{fd_budget, Guarded};
use async_trait::async_trait;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
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
/// In `state.dir`: the running usher's pid and admin address, one per line, while it runs.
pub const RUN_FILE: &str = "usher.pid";
/// In `state.dir`: the pid of a new process waiting for the listening sockets.
pub const WAITING_FILE: &str = "upgrade.waiting";
/// In `state.dir`: locked by the usher that owns the folder (its snapshot), one at a time.
pub const LOCK_FILE: &str = "usher.lock";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // The io errors are named `error`, not `source`, so that they are said once: in the message,
    // and not again by a caller printing the chain of causes.
    #[error("cannot listen on {addr} ({what}): {error}; is another process using it?")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("cannot start the server thread: {0}")]
    Thread(std::io::Error),
    #[error("usher did not start listening on {0} within {1:?}")]
    NotReady(SocketAddr, Duration),
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    #[error("cannot use the state folder {}: {error}", dir.display())]
    StateDir {
        dir: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("the state folder {} is in use by another usher{}; give each usher its own state.dir, or take over from it with `usher run --upgrade`", dir.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    StateInUse {
        dir: std::path::PathBuf,
        pid: Option<u32>,
    },
    #[error("--upgrade: no running usher found to take over from ({} names none that is alive); start it without --upgrade", dir.join(RUN_FILE).display())]
    NothingToUpgrade { dir: std::path::PathBuf },
}

/// What `usher run` leaves in `state.dir` while it runs: its pid and its admin address.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFile {
    pub pid: u32,
    pub admin: Option<SocketAddr>,
}

impl RunFile {
    pub fn read(dir: &Path) -> Option<RunFile> {
        let text = std::fs::read_to_string(dir.join(RUN_FILE)).ok()?;
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        let admin = lines.next().and_then(|a| a.trim().parse().ok());
        Some(RunFile { pid, admin })
    }

    fn write(&self, dir: &Path) -> std::io::Result<()> {
        let admin = self.admin.map(|a| a.to_string()).unwrap_or_default();
        let tmp = dir.join(format!("{RUN_FILE}.tmp"));
        std::fs::write(&tmp, format!("{}\n{admin}\n", self.pid))?;
        std::fs::rename(tmp, dir.join(RUN_FILE))
    }

    /// Whether the process is alive (signal 0 delivers nothing, only checks).
    pub fn alive(&self) -> bool {
        // SAFETY: kill with signal 0 sends nothing; it only asks whether the pid exists.
        self.pid != 0 && unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
    }
}

/// The pid a file in `dir` names, if that process is alive and is not this one.
fn live_other(dir: &Path, name: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let other = RunFile { pid, admin: None };
    (pid != std::process::id() && other.alive()).then_some(pid)
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
        TcpListener::bind(addr).map_err(|error| StartError::Bind { addr, what, error })?;
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
    if let Some(open_files) = crate::process::open_files_limit() {
        let idle_upstreams =
            (config.server.upstream_idle_connections * config.server.threads) as u64;
        let budget = fd_budget(open_files, idle_upstreams);
        usher.state().proxy_connections.set_budget(budget);
        let asked = config.server.connections.max;
        if budget == crate::transport::limit::MIN_BUDGET && asked > budget {
            tracing::error!(
                open_files,
                serving_at_most = budget,
                "the open-files limit is too small to keep descriptors for upstream connects and the admin API; raise it (ulimit -n, LimitNOFILE=) to at least 1024"
            );
        } else if asked > budget {
            tracing::warn!(
                max_connections = asked,
                serving_at_most = budget,
                open_files,
                "server.max_connections is more than the open-files limit can hold beside upstream connections and a reserve; raise the limit (ulimit -n, LimitNOFILE=) to serve more"
            );
        } else {
            tracing::info!(max_connections = asked, open_files, "connection cap set");
        }
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
    let connections = usher.state().proxy_connections.clone();
    let limits = {
        let usher = usher.clone();
        Arc::new(move || usher.generation().config.server.connections)
    };
    let mut app = http_proxy(
        &server.configuration,
        UsherProxy::new(UsherHooks::new(usher.clone())),
    );
    // HTTP/2 header blocks are held to the same limit as HTTP/1.1 heads: usher answers 431 past
    // server.max_header_bytes, so the HTTP/2 layer must let that much through (its own limit, 64
    // KiB by default, would otherwise refuse larger ones first, and smaller ones usher refuses).
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(
        u32::try_from(config.server.max_header_bytes + H2_PSEUDO_HEADER_SLACK).unwrap_or(u32::MAX),
    );
    app.h2_options = Some(h2);
    // An HTTP/2 connection is not timed by the transport once its first request is in (its
    // streams overlap): Pingora closes one idle for this long.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(config.server.connections.idle_timeout);
    let tls_options = options.clone();
    options.h2c = config.server.h2c;
    app.server_options = Some(options);
    if let Some(tls) = &config.server.tls {
        // Its own service, on plain TCP listeners: the handshake is the transport's (see
        // `transport::Guarded::with_tls`), after the connection cap, counted and timed.
        let mut tls_app = http_proxy(
            &server.configuration,
            UsherProxy::new(UsherHooks::new(usher.clone())),
        );
        tls_app.h2_options = app.h2_options.clone();
        tls_app.server_options = Some(tls_options);
        let acceptor = tls_settings(&usher, tls.h2).build();
        let mut service = Service::new(
            "usher proxy (TLS)".to_string(),
            Guarded::with_tls(tls_app, connections.clone(), limits.clone(), acceptor),
        );
        for addr in &tls.listen {
            service.add_tcp(&addr.to_string());
        }
        server.add_service(service);
    }
    let mut proxy = Service::new(
        "usher proxy".to_string(),
        Guarded::new(app, connections, limits),
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

/// Room in an HTTP/2 header list for what HTTP/1.1 puts in the request line (`:method`, `:path`,
/// `:scheme`, `:authority`) and the 32 bytes per field the list size counts.
const H2_PSEUDO_HEADER_SLACK: usize = 4096;

/// A TLS listener's settings: certificates from usher's resolver (swapped on reload), HTTP/2 by
/// ALPN when `h2`.
fn tls_settings(usher: &Usher, h2: bool) -> pingora::listeners::tls::TlsSettings {
    // No files: the resolver chooses the certificate (see `crate::tls`).
    let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")
        .expect("TLS settings without files cannot fail");
    settings.set_cert_resolver(usher.state().tls.clone());
    if h2 {
        settings.enable_h2();
    }
    settings
}

/// Loads the snapshot in `usher`'s state folder, if there is one; a snapshot that cannot be used
/// is reported and left alone (never fatal).
pub fn load_snapshot(usher: &Usher) {
    let path = snapshot::path_of(usher);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no state snapshot: starting fresh");
        }
        Err(e) => {
            usher.state().metrics.snapshot("read", "failure");
            tracing::error!(path = %path.display(), "cannot read the state snapshot, starting without it: {e}");
        }
        Ok(m) if !m.is_file() => {
            usher.state().metrics.snapshot("read", "failure");
            tracing::error!(path = %path.display(), "the state snapshot is not a regular file, starting without it");
        }
        Ok(_) => load_snapshot_from(usher, &path),
    }
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
            // Whoever went idle past the retention while usher was down goes now, not at the
            // first summary; the snapshot is written again without them then.
            let expired = usher.forget_past_retention(crate::time::wall_ms());
            if expired > 0 {
                tracing::info!(
                    customers = expired,
                    "forgotten on loading: idle past privacy.retention"
                );
            }
        }
        Err(e) => {
            usher.state().metrics.snapshot("read", "failure");
            tracing::error!(path = %path.display(), "state snapshot ignored, starting without it: {e}");
        }
    }
}

/// Pingora's signals, with SIGINT as graceful as SIGTERM (a Ctrl-C should not lose state
/// either), and SIGQUIT acted on only when a new process is waiting for the sockets: Pingora would
/// otherwise give up handing them over after a few seconds and shut down, leaving nobody serving.
struct Signals {
    state_dir: std::path::PathBuf,
}

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
        loop {
            tokio::select! {
                _ = quit.recv() => match live_other(&self.state_dir, WAITING_FILE) {
                    Some(pid) => {
                        tracing::info!(new_pid = pid, "SIGQUIT: handing the listening sockets to the new process");
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    None => tracing::error!(
                        "SIGQUIT ignored: no new process is waiting for the listening sockets; start `usher run --upgrade` (it sends SIGQUIT itself)"
                    ),
                },
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => return ShutdownSignal::GracefulTerminate,
            }
        }
    }
}

/// `usher run`: serves until SIGTERM or SIGINT (graceful; a second SIGINT exits at once) or SIGQUIT
/// (graceful upgrade), reloading on SIGHUP. Returns once requests are drained, events written
/// out and state saved. With `upgrade`, takes over from the usher running on the same state
/// folder: waits for its sockets, asks it to hand them over (SIGQUIT), and merges the state it
/// writes on its way out.
pub fn run(config: Config, source: Source, upgrade: bool) -> Result<(), StartError> {
    let dir = config.state.dir.clone();
    let dir_err = |error| StartError::StateDir {
        dir: dir.clone(),
        error,
    };
    std::fs::create_dir_all(&dir).map_err(dir_err)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(dir_err)?;
    let old = if upgrade {
        let old = RunFile::read(&dir)
            .filter(|r| r.alive() && r.pid != std::process::id())
            .ok_or_else(|| StartError::NothingToUpgrade { dir: dir.clone() })?;
        std::fs::write(dir.join(WAITING_FILE), std::process::id().to_string()).map_err(dir_err)?;
        Some(old)
    } else {
        preflight(&config)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StartError::StateInUse {
                    dir: dir.clone(),
                    pid: RunFile::read(&dir).map(|r| r.pid),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(dir_err(e)),
        }
        None
    };
    let started_ms = crate::time::wall_ms();
    let usher = Usher::with_source(config, source, Instant::now());
    if upgrade {
        // Until the old process has written its state and let go of the folder, it is its.
        usher.state().set_owns_state_dir(false);
        *usher.state().pending_erasures.lock() = Some(Vec::new());
    } else {
        load_snapshot(&usher);
    }
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Signals)?;
    // Signal handlers before anything can send one: SIGHUP's default is to kill the process.
    let (mut hup, mut int, mut usr1) = control
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::hangup())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::user_defined1())?,
            ))
        })
        .map_err(StartError::Signals)?;
    if let Some(old) = &old {
        // Pingora waits a few seconds for the sockets once it listens for them (inside
        // `build`): ask the old process for them now, rather than leave the timing to a person.
        let pid = old.pid;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            tracing::info!(
                old_pid = pid,
                "asking the running usher for its listening sockets (SIGQUIT)"
            );
            // SAFETY: sends a signal to a pid read from the state folder; nothing else.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGQUIT) };
        });
    }
    let server = build(usher.clone(), upgrade);
    if upgrade {
        let _ = std::fs::remove_file(dir.join(WAITING_FILE));
        tracing::info!("listening sockets taken over from the old process");
        let u = usher.clone();
        let within =
            u.generation().config.server.grace_period + Duration::from_secs(CLOSE_BUDGET_SECS + 10);
        std::thread::spawn(move || take_over_state(&u, lock, started_ms, within));
    } else {
        // Held for the life of the process: the folder is this usher's.
        std::mem::forget(lock);
    }
    let me = RunFile {
        pid: std::process::id(),
        admin: usher.generation().config.server.admin,
    };
    if let Err(e) = me.write(&dir) {
        tracing::warn!(dir = %dir.display(), "cannot write the run file (usher reload and --upgrade use it): {e}");
    }
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let signals = Signals {
        state_dir: dir.clone(),
    };
    std::thread::Builder::new()
        .name("usher-server".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signals),
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
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1: reopening the access log");
                    usher.state().access_log.reopen();
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
    // The run file is this process's unless a new one has taken over meanwhile.
    if RunFile::read(&dir).is_some_and(|r| r.pid == me.pid) {
        let _ = std::fs::remove_file(dir.join(RUN_FILE));
    }
    tracing::info!("usher stopped");
    Ok(())
}

/// After a graceful upgrade: the old process writes its state when it has drained, after this one
/// started, then lets go of the folder. Take the folder's lock (it is this usher's from then on)
/// and merge that state in.
fn take_over_state(usher: &Usher, lock: std::fs::File, started_ms: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                tracing::error!("the old process kept the state folder ({e:?}): this usher will not write a snapshot");
                return;
            }
        }
    }
    usher.state().set_owns_state_dir(true);
    std::mem::forget(lock);
    let path = snapshot::path_of(usher);
    match snapshot::written_by(&path) {
        Some((written_ms, pid)) if written_ms >= started_ms && pid != std::process::id() => {
            tracing::info!(old_pid = pid, "the old process's state arrived");
        }
        _ => {
            tracing::warn!(path = %path.display(), "the old process wrote no state after this one started: taking the last snapshot")
        }
    }
    load_snapshot(usher);
    // Whoever was erased while the old process still held the state came back with it.
    let erased = usher
        .state()
        .pending_erasures
        .lock()
        .take()
        .unwrap_or_default();
    for key in &erased {
        usher.erase_customer(key);
    }
    if !erased.is_empty() {
        let snapshot = snapshot::rewrite_after_erasure(usher);
        tracing::info!(
            customers = erased.len(),
            ?snapshot,
            "erasures made during the upgrade applied to the state taken over"
        );
    }
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
