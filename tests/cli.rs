//! The `usher` binary itself: `check` lists every error, `run` refuses a bad config, `demo` starts,
//! serves the admin API, stops cleanly on Ctrl-C (SIGINT), and shows what the README's tour says.

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USHER: &str = env!("CARGO_BIN_EXE_usher");

const BAD: &str = r#"
[server]
listen = ["127.0.0.1:notaport"]
[experience]
half_life = "forever"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001"]
[[routes]]
name = "a"
pool = "web"
[[routes]]
name = "b"
pool = "web"
[[routes]]
name = "c"
pool = "web2"
"#;

#[test]
fn check_lists_every_error_with_its_path_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, BAD).unwrap();
    let out = Command::new(USHER)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 error(s)"), "{err}");
    assert!(
        err.contains("server.listen[0]: \"127.0.0.1:notaport\" is not an address"),
        "{err}"
    );
    assert!(
        err.contains("experience.half_life: \"forever\" is not a duration"),
        "{err}"
    );
    assert!(
        err.contains(r#"routes[2].pool: no pool named "web2"; pools are "web""#),
        "{err}"
    );
}

#[test]
fn check_accepts_every_shipped_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(USHER)
                .args(["check", "--config"])
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn run_refuses_an_invalid_config_and_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, BAD).unwrap();
    let out = Command::new(USHER)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes[2].pool"), "{err}");
    let out = Command::new(USHER)
        .args(["run", "--config", "/nonexistent/usher.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the configuration"));
}

#[test]
fn run_reports_a_listen_address_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = dir.path().join("u.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"{}\"]\nadmin = \"{}\"\n[[pools]]\nname = \"w\"\nupstreams = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npool = \"w\"\n",
            taken.local_addr().unwrap(),
            free_addr()
        ),
    )
    .unwrap();
    let out = Command::new(USHER)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("server.listen"),
        "{err}"
    );
    // The cause is said once, not again as the error's source.
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

/// A running `usher demo`, with the addresses it was given.
struct Demo {
    child: std::process::Child,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _stderr: tempfile::NamedTempFile,
}

/// Starts the demo on fresh ports and waits for its admin API. A demo that exits before it
/// listens fails the test with its own error; only a port some other process took between
/// `free_addr` and the demo's bind is retried, on new ports.
fn spawn_demo(extra: &[&str]) -> Demo {
    for _ in 0..3 {
        let (listen, admin) = (free_addr(), free_addr());
        let (l, a) = (listen.to_string(), admin.to_string());
        let mut args = vec!["demo", "--listen", &l, "--admin", &a];
        args.extend_from_slice(extra);
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(USHER)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_ok() {
                return Demo {
                    child,
                    listen,
                    admin,
                    _stderr: stderr,
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                let err = std::fs::read_to_string(stderr.path()).unwrap_or_default();
                assert!(
                    err.contains("cannot listen on"),
                    "the demo exited ({status}) before its admin API came up:\n{err}"
                );
                eprintln!("a port was taken before the demo could bind it, trying others: {err}");
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let err = std::fs::read_to_string(stderr.path()).unwrap_or_default();
                panic!("the demo's admin API on {admin} did not come up within 30 s:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("three tries at free ports were all taken");
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the demo did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stdout_of(child: &mut std::process::Child) -> String {
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

#[test]
fn demo_serves_customers_and_stops_on_ctrl_c() {
    let Demo {
        mut child,
        listen,
        admin,
        _stderr,
    } = spawn_demo(&[]);
    // Within a few seconds the synthetic customers are tracked, alice (gold, from the table) included.
    let deadline = Instant::now() + Duration::from_secs(20);
    let alice = loop {
        let json = json_body(&http_get(admin, "/customers/alice"));
        if json["requests"].as_u64().unwrap_or(0) >= 3 {
            break json;
        }
        assert!(Instant::now() < deadline, "alice never showed up: {json}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alice["tier"], "gold", "{alice}");
    assert!(!alice["journey"].as_array().unwrap().is_empty());
    assert!(http_get(admin, "/customers?worst=3").contains("\"customers\""));

    let out = stop_demo(&mut child, "-INT");
    assert!(
        out.contains(&format!("curl http://{admin}/customers?worst=5")),
        "{out}"
    );
    // Its listeners are released.
    assert!(std::net::TcpListener::bind(listen).is_ok());
}

/// Sends the demo a signal, expects a clean stop that says so, removes the folder it leaves its
/// events in, and returns what it printed.
fn stop_demo(child: &mut std::process::Child, signal: &str) -> String {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_exit(child, Duration::from_secs(15));
    assert!(status.success(), "{signal}: {status:?}");
    let out = stdout_of(child);
    assert!(out.contains("usher demo: stopping"), "{signal}: {out}");
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("usher demo: events kept in "))
        .unwrap_or_else(|| panic!("no events file in: {out}"));
    let _ = std::fs::remove_dir_all(std::path::Path::new(kept).parent().unwrap());
    out
}

/// A Ctrl-C (or SIGTERM) sent the moment the demo listens, while it may still be starting its
/// traffic, stops it as cleanly as a later one: it was once lost, and the demo ran on.
#[test]
fn demo_stops_on_a_signal_sent_as_soon_as_it_listens() {
    for signal in ["-INT", "-TERM", "-INT"] {
        let Demo { mut child, .. } = spawn_demo(&[]);
        stop_demo(&mut child, signal);
    }
}

/// One journey step as the admin API shows it, with its start and end in milliseconds.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    customer: String,
    tier: String,
    route: String,
    upstream: String,
    path: String,
    start_ms: f64,
    end_ms: f64,
}

fn steps_of(customer: &serde_json::Value) -> Vec<Seen> {
    let ms = |at: &str| {
        humantime::parse_rfc3339(at)
            .map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
                    * 1000.0
            })
            .unwrap_or(0.0)
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    customer["journey"]
        .as_array()
        .map(|j| {
            j.iter()
                .map(|s| {
                    let end_ms = ms(s["at"].as_str().unwrap_or_default());
                    Seen {
                        customer: text(&customer["id"]),
                        tier: text(&customer["tier"]),
                        route: text(&s["route"]),
                        upstream: text(&s["upstream"]),
                        path: text(&s["path"]),
                        start_ms: end_ms - s["latency_ms"].as_f64().unwrap_or(0.0),
                        end_ms,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The README's tour, run for 40 s: what it says the demo shows, the demo shows.
#[test]
fn the_demo_shows_what_the_readme_says() {
    let Demo {
        mut child,
        listen: _,
        admin,
        _stderr,
    } = spawn_demo(&["--duration", "40s", "--brownout-after", "12s"]);
    let ids: Vec<&str> = usher::demo::everyone()
        .iter()
        .map(|c| c.id)
        .filter(|id| !id.is_empty())
        .collect();
    // Every step of every named customer (their journeys hold the last 16; polled often enough
    // to see each), and the last view of the upstreams.
    let mut seen: Vec<Seen> = Vec::new();
    let mut degraded = std::collections::BTreeSet::new();
    let mut ups = serde_json::Value::Null;
    while child.try_wait().unwrap().is_none() {
        for &id in &ids {
            let c = json_body(&http_get(admin, &format!("/customers/{id}")));
            if c["state"] == "degraded" {
                degraded.insert(format!("{id} ({})", c["tier"].as_str().unwrap_or("")));
            }
            for s in steps_of(&c) {
                if !seen.contains(&s) {
                    seen.push(s);
                }
            }
        }
        let now = json_body(&http_get(admin, "/upstreams"));
        if now.is_object() {
            ups = now;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let out = stdout_of(&mut child);
    let addr_of = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name} on ")))
            .unwrap_or_else(|| panic!("{name} not in: {out}"))
            .to_string()
    };
    let (web2, web3) = (addr_of("web-2"), addr_of("web-3"));
    let upstream = |addr: &str| -> serde_json::Value {
        ups["upstreams"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["address"] == addr))
            .cloned()
            .unwrap_or_else(|| panic!("{addr} not in {ups}"))
    };

    // web-3 is taken out of the checkout alone, for its latency, and keeps serving elsewhere.
    let w3 = upstream(&web3);
    let lane = |u: &serde_json::Value, route: &str| -> serde_json::Value {
        u["routes"]
            .as_array()
            .and_then(|a| a.iter().find(|l| l["route"] == route))
            .cloned()
            .unwrap_or_default()
    };
    let checkout = lane(&w3, "checkout");
    assert!(checkout["ejections"].as_u64().unwrap_or(0) >= 1, "{w3}");
    assert_eq!(w3["state"], "healthy", "{w3}");
    assert!(
        seen.iter().any(|s| s.upstream == web3 && s.route == "site"),
        "web-3 serves the rest of the site"
    );
    // The browned-out web-2 is ejected, with its reason.
    let w2 = upstream(&web2);
    let out_somewhere = w2["state"] != "healthy"
        || w2["routes"].as_array().is_some_and(|a| {
            a.iter()
                .any(|l| l["state"] != "healthy" && l["why"]["detail"].is_string())
        });
    assert!(out_somewhere, "{w2}");

    // The stuck step the README quotes: a standard customer's GET /checkout served by web-3 in
    // 1.5 s against the route's 300 ms target.
    let slow: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.route == "checkout" && s.upstream == web3)
        .collect();
    let stuck = slow
        .iter()
        .find(|s| s.tier == "standard" && s.path == "/checkout" && s.end_ms - s.start_ms >= 1500.0)
        .unwrap_or_else(|| panic!("no standard customer stuck on web-3's checkout: {slow:?}"));
    // Gold customers never go there once its slowness on the checkout is known: no gold
    // checkout step on web-3 began after the first answer from it there had come back.
    let known = slow.iter().map(|s| s.end_ms).fold(f64::MAX, f64::min);
    let late_gold: Vec<&&Seen> = slow
        .iter()
        .filter(|s| s.tier == "gold" && s.start_ms >= known)
        .collect();
    assert!(
        late_gold.is_empty(),
        "{late_gold:?} (known slow at {known})"
    );
    assert!(
        seen.iter()
            .filter(|s| s.tier == "gold" && s.route == "checkout")
            .count()
            >= 5,
        "the gold customers did check out: {seen:?}"
    );

    // A standard customer degrades visibly: carol, whose order export is slow on every origin.
    assert!(degraded.contains("carol (standard)"), "{degraded:?}");
    assert!(
        degraded.iter().all(|d| !d.ends_with("(gold)")),
        "{degraded:?}"
    );

    // The events the README promises are in the file the demo kept.
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("usher demo: events kept in "))
        .unwrap_or_else(|| panic!("no events file in: {out}"));
    let events: Vec<serde_json::Value> = std::fs::read_to_string(kept)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |t: &'static str| events.iter().filter(move |e| e["type"] == t);
    assert!(
        of("usher.customer.degraded").any(|e| e["data"]["customer"] == "carol"),
        "{events:?}"
    );
    assert!(
        of("usher.customer.journey_abandoned")
            .any(|e| e["data"]["furthest_step"] == "pay" && e["data"]["after_trouble"] == true),
        "{events:?}"
    );
    assert!(
        of("usher.upstream.ejected")
            .any(|e| e["data"]["upstream"] == web3.as_str() && e["data"]["route"] == "checkout"),
        "{events:?}"
    );
    // Struggle is read from real trouble, not the demo's pace: whoever is marked struggling had a
    // failed or frustrating request in the steps the event carries (the shoppers pause between
    // visits, so none loops by walking the shop).
    let struggling: Vec<&serde_json::Value> = of("usher.customer.struggling").collect();
    for e in &struggling {
        let troubled = e["data"]["journey"].as_array().is_some_and(|j| {
            j.iter().any(|s| {
                s["marks"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m == "failed" || m == "frustrated"))
            })
        });
        assert!(troubled, "struggling without trouble: {e}");
    }
    assert!(
        struggling.iter().any(|e| e["subject"] == "carol"),
        "carol, who asks for her slow export again and again: {struggling:?}"
    );
    for e in of("usher.customer.rerouted") {
        assert_ne!(e["data"]["upstream"], e["data"]["avoided_upstream"], "{e}");
    }
    println!(
        "demo: stuck step {stuck:?}; {} checkout steps on web-3, none gold after {known}; degraded {degraded:?}; {} events, {} struggling ({:?})",
        slow.len(),
        events.len(),
        struggling.len(),
        struggling.iter().map(|e| (&e["subject"], &e["data"]["signals"])).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(std::path::Path::new(kept).parent().unwrap());
}

fn json_body(response: &str) -> serde_json::Value {
    response
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or_default()
}

/// A blocking HTTP/1.1 GET with `Connection: close`, so this file needs no async runtime.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
