//! The `usher run` process over its life, through real signals: SIGHUP and `usher reload` read the
//! file again (and refuse a bad one, saying why), SIGTERM drains and saves, a restart carries every
//! customer's score and journey and still reports the funnel left before it, and a graceful upgrade
//! hands the listening sockets and the state to a new process without refusing a connection.

mod common;

use common::process::Proc;
use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use usher::origin::Origin;

const USHER: &str = env!("CARGO_BIN_EXE_usher");

fn usher_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(USHER).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    json(&client(), format!("http://{admin}{path}")).await
}

async fn until<T>(within: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn site(listen: SocketAddr, admin: SocketAddr, origin: SocketAddr, extra: &str) -> String {
    format!(
        r#"[server]
listen = ["{listen}"]
admin = "{admin}"
grace_period = "20s"
[[pools]]
name = "web"
upstreams = ["{origin}"]
{extra}
[[routes]]
name = "site"
match = {{ path_prefix = "/site" }}
pool = "web"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_usher_reload_read_the_file_again_and_refuse_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("o").await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let path = dir.path().join("usher.toml");
    let promo =
        "[[routes]]\nname = \"promo\"\nmatch = { path_prefix = \"/promo\" }\npool = \"web\"";
    std::fs::write(&path, site(listen, admin, origin.addr, "")).unwrap();
    let mut p = Proc::run_in(dir.path(), "usher.toml");
    usher::server::wait_listening(admin, Duration::from_secs(20)).unwrap();
    let c = client();
    assert_eq!(
        get(&c, format!("http://{listen}/promo/1"), &[]).await.0,
        404
    );

    // SIGHUP, the operator's reload: the new route answers, nothing restarted.
    std::fs::write(&path, site(listen, admin, origin.addr, promo)).unwrap();
    p.signal("HUP");
    until(Duration::from_secs(10), "generation 2", async || {
        (admin_json(admin, "/config").await["generation"] == 2).then_some(())
    })
    .await;
    assert_eq!(
        get(&c, format!("http://{listen}/promo/1"), &[]).await.0,
        200
    );
    let cfg = admin_json(admin, "/config").await;
    assert_eq!(
        cfg["file"],
        std::fs::canonicalize(&path).unwrap().display().to_string()
    );
    assert_eq!(cfg["cause"], "reload");

    // A bad file: SIGHUP changes nothing and the process stays up; `usher reload` says why.
    std::fs::write(
        &path,
        site(listen, admin, origin.addr, promo).replace(
            "pool = \"web\"\n[[routes]]\nname = \"site\"",
            "pool = \"gone\"\n[[routes]]\nname = \"site\"",
        ),
    )
    .unwrap();
    p.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.alive(), "SIGHUP with a bad file must not stop usher");
    assert_eq!(admin_json(admin, "/config").await["generation"], 2);
    let file = path.to_str().unwrap();
    let (code, _, err) = usher_cli(&["reload", "--config", file]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("reload refused")
            && err.contains("nothing was sent")
            && err.contains("routes[0].pool: no pool named \"gone\""),
        "{err}"
    );
    assert_eq!(
        get(&c, format!("http://{listen}/promo/1"), &[]).await.0,
        200
    );

    // A listener that changes cannot be applied live: refused, with what to do instead.
    let moved = site(free_addr(), admin, origin.addr, promo);
    std::fs::write(&path, &moved).unwrap();
    let (code, _, err) = usher_cli(&["reload", "--config", file]);
    assert_eq!(code, 2);
    assert!(
        err.contains("server.listen changed") && err.contains("--upgrade"),
        "{err}"
    );

    // Back to a good file: `usher reload` applies it.
    std::fs::write(&path, site(listen, admin, origin.addr, "")).unwrap();
    let (code, out, err) = usher_cli(&["reload", "--config", file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reloaded: generation 3"), "{out}");
    assert_eq!(
        get(&c, format!("http://{listen}/promo/1"), &[]).await.0,
        404
    );
    let (_, metrics) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(
        sample(
            &metrics,
            "usher_config_reloads_total",
            &[("result", "success")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "usher_config_reloads_total",
            &[("result", "failure")]
        ),
        // The bad file by SIGHUP and the moved listener; `usher reload` refused the bad file
        // itself, without asking.
        Some(2.0)
    );
    p.signal("TERM");
    p.wait(Duration::from_secs(15));
}

/// One request on a connection of its own, as a client arriving fresh would make it.
fn fresh_get(addr: SocketAddr, path: &str, who: &str) -> Result<u16, String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nx-customer-id: {who}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    out.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_scores_and_journeys_and_reports_the_funnel_left_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("o").await.unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    origin
        .behavior
        .add_slow_path("/site/slow", Duration::from_millis(800));
    let (listen, admin) = (free_addr(), free_addr());
    let events = dir.path().join("events.jsonl");
    let extra = format!(
        r#"[[pools]]
name = "broken"
upstreams = ["{}"]
[[routes]]
name = "flaky"
match = {{ path_prefix = "/flaky" }}
pool = "broken"
[[events.sinks]]
type = "jsonl"
path = "{}"
[[funnels]]
name = "checkout"
abandon_after = "3s"
steps = [{{ name = "cart", path = "/site/cart" }}, {{ name = "pay", path = "/site/pay" }}, {{ name = "done", path = "/site/done" }}]
"#,
        broken.addr,
        events.display()
    );
    let path = dir.path().join("usher.toml");
    std::fs::write(&path, site(listen, admin, origin.addr, &extra)).unwrap();
    let mut first = Proc::run(&path, &[]);
    usher::server::wait_listening(listen, Duration::from_secs(20)).unwrap();
    for p in ["/site/a", "/site/b", "/flaky/c", "/site/d", "/flaky/e"] {
        fresh_get(listen, p, "ann").unwrap();
    }
    assert_eq!(fresh_get(listen, "/site/cart", "cid"), Ok(200));
    let before = admin_json(admin, "/customers/ann").await;
    assert_eq!(before["requests"], 5);
    assert!(before["score"].as_f64().unwrap() < 100.0, "{before}");

    // SIGTERM with a slow request in flight: it is answered, then usher exits at once, long
    // before the 20 s grace period.
    let slow = std::thread::spawn(move || fresh_get(listen, "/site/slow", "sue"));
    std::thread::sleep(Duration::from_millis(200));
    first.signal("TERM");
    assert_eq!(
        slow.join().unwrap(),
        Ok(200),
        "the request in flight at SIGTERM was served"
    );
    let took = first.wait(Duration::from_secs(15));
    assert!(
        took < Duration::from_secs(10),
        "drained and saved in {took:?}"
    );
    assert!(dir.path().join("usher-state/usher.snapshot").exists());

    let mut second = Proc::run(&path, &[]);
    usher::server::wait_listening(admin, Duration::from_secs(20)).unwrap();
    let after = admin_json(admin, "/customers/ann").await;
    for key in [
        "score",
        "requests",
        "errors",
        "frustrated",
        "first_seen",
        "last_seen",
        "journey",
        "tier",
    ] {
        assert_eq!(after[key], before[key], "{key} after the restart");
    }
    let sue = admin_json(admin, "/customers/sue").await;
    assert_eq!(
        sue["requests"], 1,
        "the drained request was recorded before the snapshot"
    );
    // The funnel cid entered before the restart is reported abandoned after it.
    let abandoned = until(Duration::from_secs(10), "the abandonment", async || {
        let ev = admin_json(admin, "/events?limit=100").await;
        ev["events"]
            .as_array()?
            .iter()
            .find(|e| e["type"] == "usher.customer.journey_abandoned" && e["subject"] == "cid")
            .cloned()
    })
    .await;
    assert_eq!(abandoned["data"]["furthest_step"], "cart", "{abandoned}");
    second.signal("TERM");
    second.wait(Duration::from_secs(15));
    let lines = std::fs::read_to_string(&events).unwrap();
    assert!(lines.contains("\"subject\":\"cid\""), "{lines}");
    assert_eq!(
        lines
            .lines()
            .filter(|l| l.contains("journey_abandoned"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_upgrade_refuses_no_connection_and_hands_over_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("o").await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let path = dir.path().join("usher.toml");
    std::fs::write(&path, site(listen, admin, origin.addr, "")).unwrap();
    let mut old = Proc::run(&path, &[]);
    usher::server::wait_listening(listen, Duration::from_secs(20)).unwrap();
    for _ in 0..2 {
        assert_eq!(fresh_get(listen, "/site/x", "bob"), Ok(200));
    }
    // Another usher on the same state folder is refused: the folder (its snapshot) is this one's.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, site(free_addr(), free_addr(), origin.addr, "")).unwrap();
    let (code, _, err) = usher_cli(&["run", "--config", other.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("is in use by another usher"), "{err}");
    // Clients arriving all along, each on a new connection.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut bad) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match fresh_get(listen, "/site/y", "load") {
                    Ok(200) => ok += 1,
                    other => bad.push(other),
                }
            }
            (ok, bad)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // A SIGQUIT with no new process waiting is ignored: the old one keeps serving.
    old.signal("QUIT");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        old.alive(),
        "SIGQUIT with nobody to hand the sockets to must not stop usher"
    );
    assert_eq!(fresh_get(listen, "/site/x", "bob"), Ok(200));
    // The new process asks the old one for the sockets itself.
    let mut new = Proc::run(&path, &["--upgrade"]);
    old.wait(Duration::from_secs(30));
    // The old process is gone; the new one serves, and has bob's history from the old one.
    let bob = until(
        Duration::from_secs(10),
        "bob's state in the new process",
        async || {
            let (s, body) = get(&client(), format!("http://{admin}/customers/bob"), &[]).await;
            (s == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap())
        },
    )
    .await;
    assert_eq!(bob["requests"], 3, "{bob}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad) = traffic.join().unwrap();
    assert!(
        bad.is_empty(),
        "refused or failed across the upgrade: {bad:?}"
    );
    assert!(ok > 20, "traffic ran across the upgrade: {ok} requests");
    let load = admin_json(admin, "/customers/load").await;
    assert_eq!(
        load["requests"], ok,
        "every request, served by either process, is on record"
    );
    new.signal("TERM");
    new.wait(Duration::from_secs(15));
}

#[test]
fn an_upgrade_with_nothing_to_take_over_from_says_so_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usher.toml");
    std::fs::write(&path, site(free_addr(), free_addr(), free_addr(), "")).unwrap();
    let t = Instant::now();
    let (code, _, err) = usher_cli(&["run", "--config", path.to_str().unwrap(), "--upgrade"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no running usher found to take over from"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "no waiting for sockets that will never come"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_webhook_backoff_loses_no_event_older_than_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let (listen, admin) = (free_addr(), free_addr());
    let mut receiver = Receiver::new(free_addr());
    let path = dir.path().join("usher.toml");
    let sinks = format!(
        "[[events.sinks]]\ntype = \"webhook\"\nname = \"crm\"\nurl = \"http://{}/events\"\ntimeout = \"300ms\"\n",
        receiver.addr
    );
    std::fs::write(&path, site(listen, admin, broken.addr, &sinks)).unwrap();
    let mut first = Proc::run(&path, &[]);
    usher::server::wait_listening(listen, Duration::from_secs(20)).unwrap();
    // The receiver is down: the sink is backing off while events keep coming.
    for i in 0..20 {
        for _ in 0..3 {
            assert_eq!(fresh_get(listen, "/site/x", &format!("c{i}")), Ok(503));
        }
    }
    let raised = admin_json(admin, "/events?limit=1000").await;
    let want: std::collections::HashSet<String> = raised["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(want.len() >= 20, "{raised}");
    std::thread::sleep(Duration::from_millis(1200));
    first.signal("KILL");
    let _ = first.0.wait();

    receiver.start().await;
    let mut second = Proc::run(&path, &[]);
    usher::server::wait_listening(admin, Duration::from_secs(20)).unwrap();
    until(
        Duration::from_secs(30),
        "every event raised before the kill",
        async || {
            let got: std::collections::HashSet<String> = receiver.ids().into_iter().collect();
            want.is_subset(&got).then_some(())
        },
    )
    .await;
    println!(
        "{} events raised at least 1.2 s before kill -9, every one delivered after the restart",
        want.len()
    );
    second.signal("TERM");
    second.wait(Duration::from_secs(15));
}
