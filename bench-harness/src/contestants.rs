//! The contestants and how each is started in front of a set of upstreams. Peer configs are the
//! checked-in files in `bench-harness/peers/`, filled in here.

use crate::procs::{self, Proc};
use crate::tls::TlsFiles;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The core the proxy under test runs on.
pub const PROXY_CORE: usize = 0;
/// The core the harness itself runs on (`bench-harness/run` pins it), with the load generators
/// and the origins.
pub const LOAD_CORE: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contestant {
    Direct,
    Bare,
    /// Bare Pingora with usher's default peer timeouts: throughput only.
    BareTimeouts,
    Usher,
    /// usher with its configuration reloaded (SIGHUP) every second: throughput only.
    UsherReloading,
    /// Another usher binary (`USHER_BEFORE`), e.g. the build before a change: throughput only.
    UsherBefore,
    Nginx,
    Haproxy,
}

impl Contestant {
    pub const ALL: [Contestant; 5] = [
        Contestant::Direct,
        Contestant::Bare,
        Contestant::Usher,
        Contestant::Nginx,
        Contestant::Haproxy,
    ];
    pub const PROXIES: [Contestant; 4] = [
        Contestant::Bare,
        Contestant::Usher,
        Contestant::Nginx,
        Contestant::Haproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contestant::Direct => "direct",
            Contestant::Bare => "bare Pingora",
            Contestant::BareTimeouts => "bare Pingora + timeouts",
            Contestant::Usher => "usher",
            Contestant::UsherReloading => "usher, reload every second",
            Contestant::UsherBefore => "usher (before)",
            Contestant::Nginx => "nginx",
            Contestant::Haproxy => "HAProxy",
        }
    }
}

/// Where the binaries are.
pub struct Tools {
    pub usher: PathBuf,
    /// `USHER_BEFORE`: an earlier usher binary to measure side by side.
    pub usher_before: Option<PathBuf>,
    pub bare: PathBuf,
    pub nginx: PathBuf,
    pub haproxy: PathBuf,
    pub peers: PathBuf,
    pub work: PathBuf,
}

/// A running contestant: where to send traffic, and the process to measure (none for direct).
pub struct Running {
    pub target: SocketAddr,
    /// A TLS contestant's plain HTTP/1.1 listener, beside `target`: to measure what TLS costs it.
    pub plain: Option<SocketAddr>,
    pub proc: Option<Proc>,
    pub admin: Option<SocketAddr>,
    /// Sends SIGHUP every second while it lives (`UsherReloading`).
    pub reloader: Option<Reloader>,
}

/// A thread that sends a process SIGHUP every second until dropped; counts what it sent.
pub struct Reloader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl Reloader {
    fn start(pid: u32) -> Reloader {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0;
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let ok = std::process::Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status()
                    .is_ok_and(|st| st.success());
                sent += u32::from(ok);
            }
            sent
        });
        Reloader {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; the number of reloads it asked for.
    pub fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// usher with everything on: identity and trusted tiers, scoring and journeys, protection and
/// rescue, the experience header, latency-aware balancing with passive and active health, retries,
/// metrics, and follow-up events to a JSON-lines file with a checkout funnel and an objective.
pub fn usher_config(
    listen: SocketAddr,
    admin: SocketAddr,
    upstreams: &[SocketAddr],
    dir: &Path,
) -> String {
    let ups: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"
[server]
listen = ["{listen}"]
admin = "{admin}"
threads = 1

[identity]
customer_id = [{{ header = "x-customer-id" }}, {{ cookie = "cid" }}]
tier = [{{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }}]
default_tier = "standard"

[[tiers]]
name = "gold"
protected = true
follow_up = "phone within 1h"
notify_failures = true

[[tiers]]
name = "standard"
follow_up = "email"

[experience]
track_max = 1000000
journey_len = 16

[protection]
rescue_below = 50
experience_header = "x-usher-experience"

[events]
spool_dir = "{dir}/spool"

[[events.sinks]]
type = "jsonl"
path = "{dir}/events.jsonl"

[[funnels]]
name = "checkout"
abandon_after = "30m"
steps = [{{ name = "cart", path = "/cart" }}, {{ name = "checkout", path = "/checkout" }}, {{ name = "done", path = "/checkout/done" }}]

[[pools]]
name = "web"
upstreams = [{ups}]
health_check = {{ path = "/healthz", interval = "1s", timeout = "500ms" }}

[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "web"
critical = true
target = "100ms"
slo = 0.999

[[routes]]
name = "site"
pool = "web"
target = "200ms"
"#,
        dir = dir.display(),
        ups = ups.join(", ")
    )
}

/// usher's everything-on configuration with a TLS listener added: the test certificate as the
/// default, HTTP/2 by ALPN (usher's default).
pub fn usher_tls_config(
    listen: SocketAddr,
    tls_listen: SocketAddr,
    admin: SocketAddr,
    upstreams: &[SocketAddr],
    dir: &Path,
    files: &TlsFiles,
) -> String {
    usher_config(listen, admin, upstreams, dir).replacen(
        "threads = 1\n",
        &format!(
            "threads = 1\n\n[server.tls]\nlisten = [\"{tls_listen}\"]\n\n[[server.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\ndefault = true\n",
            files.cert.display(),
            files.key.display()
        ),
        1,
    )
}

impl Tools {
    /// Starts `c` (bare Pingora, usher or nginx) terminating TLS with `files` in front of
    /// `origin`; the target is its TLS listener.
    pub fn start_tls(
        &self,
        c: Contestant,
        origin: SocketAddr,
        files: &TlsFiles,
        tag: &str,
    ) -> anyhow::Result<Running> {
        self.start_tls_as(c, origin, files, tag, None)
    }

    /// As [`Tools::start_tls`], under callgrind writing to `counted` when given (see
    /// [`Proc::count_instructions`]).
    pub fn start_tls_as(
        &self,
        c: Contestant,
        origin: SocketAddr,
        files: &TlsFiles,
        tag: &str,
        counted: Option<&Path>,
    ) -> anyhow::Result<Running> {
        let launch = |name: &str, program: &Path, args: &[String]| match counted {
            Some(out) => Proc::pinned_counted(name, PROXY_CORE, program, args, out),
            None => Proc::pinned(name, PROXY_CORE, program, args),
        };
        let listen = procs::free_addr();
        let tls_listen = procs::free_addr();
        let dir = self
            .work
            .join(format!("{}-{tag}", c.name().replace(' ', "-")));
        std::fs::create_dir_all(&dir)?;
        let (proc, admin) = match c {
            Contestant::Bare | Contestant::BareTimeouts => {
                let mut args = vec![
                    "--tls".to_string(),
                    files.cert.display().to_string(),
                    files.key.display().to_string(),
                    tls_listen.to_string(),
                    listen.to_string(),
                    origin.to_string(),
                ];
                if c == Contestant::BareTimeouts {
                    args.insert(0, "--timeouts".to_string());
                }
                (launch("bare", &self.bare, &args)?, None)
            }
            Contestant::Usher => {
                let admin = procs::free_addr();
                let path = dir.join("usher.toml");
                std::fs::write(
                    &path,
                    usher_tls_config(listen, tls_listen, admin, &[origin], &dir, files),
                )?;
                let args = vec![
                    "run".to_string(),
                    "--config".to_string(),
                    path.display().to_string(),
                ];
                (launch("usher", &self.usher, &args)?, Some(admin))
            }
            Contestant::Nginx => {
                let conf = procs::render(
                    &self.peer("nginx-tls.conf"),
                    &[
                        ("DIR", dir.display().to_string()),
                        ("LISTEN", tls_listen.to_string()),
                        ("PLAIN", listen.to_string()),
                        ("ORIGIN", origin.to_string()),
                        ("CERT", files.cert.display().to_string()),
                        ("KEY", files.key.display().to_string()),
                    ],
                );
                let path = dir.join("nginx.conf");
                std::fs::write(&path, conf)?;
                let args = vec![
                    "-c".into(),
                    path.display().to_string(),
                    "-p".into(),
                    dir.display().to_string(),
                ];
                (launch("nginx", &self.nginx, &args)?, None)
            }
            _ => anyhow::bail!("no TLS set-up for {}", c.name()),
        };
        // Under callgrind a process starts some fifty times slower.
        let within = Duration::from_secs(if counted.is_some() { 120 } else { 15 });
        procs::wait_listening(tls_listen, within)?;
        Ok(Running {
            target: tls_listen,
            plain: Some(listen),
            proc: Some(proc),
            admin,
            reloader: None,
        })
    }

    fn peer(&self, file: &str) -> String {
        std::fs::read_to_string(self.peers.join(file)).unwrap_or_default()
    }

    /// Starts `c` in front of `upstreams` (for direct: the first upstream itself).
    pub fn start(
        &self,
        c: Contestant,
        upstreams: &[SocketAddr],
        tag: &str,
    ) -> anyhow::Result<Running> {
        let listen = procs::free_addr();
        let dir = self
            .work
            .join(format!("{}-{tag}", c.name().replace(' ', "-")));
        std::fs::create_dir_all(&dir)?;
        let (proc, admin) = match c {
            Contestant::Direct => {
                return Ok(Running {
                    target: upstreams[0],
                    plain: None,
                    proc: None,
                    admin: None,
                    reloader: None,
                })
            }
            Contestant::Bare | Contestant::BareTimeouts => {
                let mut args = vec![listen.to_string()];
                if c == Contestant::BareTimeouts {
                    args.insert(0, "--timeouts".to_string());
                }
                args.extend(upstreams.iter().map(|u| u.to_string()));
                (Proc::pinned("bare", PROXY_CORE, &self.bare, &args)?, None)
            }
            Contestant::Usher | Contestant::UsherReloading | Contestant::UsherBefore => {
                let admin = procs::free_addr();
                let path = dir.join("usher.toml");
                std::fs::write(&path, usher_config(listen, admin, upstreams, &dir))?;
                let args = vec![
                    "run".to_string(),
                    "--config".to_string(),
                    path.display().to_string(),
                ];
                let binary = match (c, &self.usher_before) {
                    (Contestant::UsherBefore, Some(b)) => b,
                    (Contestant::UsherBefore, None) => {
                        anyhow::bail!("set USHER_BEFORE to the usher binary to compare with")
                    }
                    _ => &self.usher,
                };
                (
                    Proc::pinned("usher", PROXY_CORE, binary, &args)?,
                    Some(admin),
                )
            }
            Contestant::Nginx => {
                let servers: Vec<String> = upstreams
                    .iter()
                    .map(|u| format!("        server {u} max_fails=1 fail_timeout=10s;"))
                    .collect();
                let conf = procs::render(
                    &self.peer("nginx-proxy.conf"),
                    &[
                        ("DIR", dir.display().to_string()),
                        ("LISTEN", listen.to_string()),
                        ("SERVERS", servers.join("\n")),
                    ],
                );
                let path = dir.join("nginx.conf");
                std::fs::write(&path, conf)?;
                let args = vec![
                    "-c".into(),
                    path.display().to_string(),
                    "-p".into(),
                    dir.display().to_string(),
                ];
                (Proc::pinned("nginx", PROXY_CORE, &self.nginx, &args)?, None)
            }
            Contestant::Haproxy => {
                let servers: Vec<String> = upstreams
                    .iter()
                    .enumerate()
                    .map(|(i, u)| {
                        format!("    server s{i} {u} check inter 1s observe layer7 error-limit 10 on-error mark-down")
                    })
                    .collect();
                let conf = procs::render(
                    &self.peer("haproxy.cfg"),
                    &[
                        ("LISTEN", listen.to_string()),
                        ("SERVERS", servers.join("\n")),
                    ],
                );
                let path = dir.join("haproxy.cfg");
                std::fs::write(&path, conf)?;
                let args = vec!["-f".into(), path.display().to_string(), "-db".into()];
                (
                    Proc::pinned("haproxy", PROXY_CORE, &self.haproxy, &args)?,
                    None,
                )
            }
        };
        procs::wait_listening(listen, Duration::from_secs(15))?;
        let reloader = (c == Contestant::UsherReloading).then(|| Reloader::start(proc.pid()));
        Ok(Running {
            target: listen,
            plain: None,
            proc: Some(proc),
            admin,
            reloader,
        })
    }

    /// The `return 200` origin for throughput and latency runs, on `core`.
    pub fn nginx_origin(&self, core: usize) -> anyhow::Result<(Proc, SocketAddr)> {
        let listen = procs::free_addr();
        let dir = self.work.join("origin");
        std::fs::create_dir_all(&dir)?;
        let conf = procs::render(
            &self.peer("nginx-origin.conf"),
            &[
                ("DIR", dir.display().to_string()),
                ("LISTEN", listen.to_string()),
            ],
        );
        let path = dir.join("origin.conf");
        std::fs::write(&path, conf)?;
        let args = vec![
            "-c".into(),
            path.display().to_string(),
            "-p".into(),
            dir.display().to_string(),
        ];
        let p = Proc::pinned("origin", core, &self.nginx, &args)?;
        procs::wait_listening(listen, Duration::from_secs(10))?;
        Ok((p, listen))
    }
}
