//! The access log and the request id, end to end: a real usher writing a real file, read back
//! field by field for a protected and a standard customer; the id at the upstream and back at
//! the client; logrotate's move and SIGUSR1 with the real binary.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use usher::origin::Origin;

fn shop(origin: &Origin, log: &std::path::Path, format: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["{listen}"]
admin = "{admin}"
{extra}
[access_log]
path = "{log}"
format = "{format}"
[identity]
tier = [{{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }}]
[[tiers]]
name = "gold"
protected = true
[[tiers]]
name = "standard"
[[pools]]
name = "web"
upstreams = ["{origin}"]
[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "web"
critical = true
[[routes]]
name = "site"
pool = "web"
"#,
        listen = free_addr(),
        admin = free_addr(),
        log = log.display(),
        origin = origin.addr,
    )
}

/// The log's lines, once there are `n` of them.
fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let l: Vec<String> = text.lines().map(String::from).collect();
        if l.len() >= n {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{} lines of {n}: {text}",
            l.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_line_with_every_field_and_its_id_travels() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("web").await.unwrap();
    let log = dir.path().join("access.log");
    let cfg = usher::Config::parse(&shop(&origin, &log, "json", ""), dir.path()).unwrap();
    let running = usher::server::spawn(cfg).unwrap();
    let c = client();
    let url = |p: &str| format!("http://{}{p}", running.listen());
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // A gold customer's checkout, with a trace and no request id: the trace id becomes it.
    let resp = c
        .get(url("/checkout/pay?card=4111"))
        .header("x-customer-id", "gina")
        .header("x-customer-tier", "gold")
        .header("traceparent", tp)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], id.as_str(), "{seen}");
    assert_eq!(
        seen["headers"]["traceparent"], tp,
        "passed through untouched"
    );

    // A standard customer who brings an id of their own front's: kept. And one with junk: replaced.
    let resp = c
        .get(url("/products/1"))
        .header("x-customer-id", "sam")
        .header("x-request-id", "front-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "front-42");
    let resp = c
        .get(url("/products/2"))
        .header("x-customer-id", "sam")
        .header("x-request-id", "a".repeat(300))
        .send()
        .await
        .unwrap();
    let made = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 32, "{made}");
    // A request usher refuses itself is logged too, and answered with its id.
    let resp = c
        .get(url("/x"))
        .header("x-customer-id", "sam")
        .header("x-big", "b".repeat(70_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    assert!(resp.headers().contains_key("x-request-id"));

    let l = lines(&log, 4);
    let e: Vec<serde_json::Value> = l.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let gold = &e[0];
    for (k, v) in [
        ("request_id", serde_json::json!(id)),
        ("client", serde_json::json!("127.0.0.1")),
        ("method", serde_json::json!("GET")),
        ("host", serde_json::json!(running.listen().to_string())),
        ("path", serde_json::json!("/checkout/pay")),
        ("protocol", serde_json::json!("HTTP/1.1")),
        ("status", serde_json::json!(200)),
        ("bytes_in", serde_json::json!(0)),
        ("route", serde_json::json!("checkout")),
        ("upstream", serde_json::json!(origin.addr.to_string())),
        ("attempts", serde_json::json!(1)),
        ("outcome", serde_json::json!("ok")),
        ("customer", serde_json::json!("gina")),
        ("tier", serde_json::json!("gold")),
        ("state", serde_json::json!("ok")),
        ("protected", serde_json::json!(true)),
        ("protection", serde_json::json!("tier_on_critical")),
    ] {
        assert_eq!(gold[k], v, "{k} in {gold}");
    }
    assert!(gold["bytes_out"].as_u64().unwrap() > 0, "{gold}");
    assert!(gold["duration_ms"].as_f64().unwrap() > 0.0, "{gold}");
    assert!(gold["upstream_ms"].as_f64().unwrap() > 0.0, "{gold}");
    assert!(gold["score"].as_f64().is_some(), "{gold}");
    assert!(gold["time"].as_str().unwrap().ends_with('Z'), "{gold}");
    let sam = &e[1];
    assert_eq!(
        (
            sam["customer"].as_str(),
            sam["tier"].as_str(),
            sam["protected"].as_bool(),
            sam["route"].as_str(),
            sam["request_id"].as_str()
        ),
        (
            Some("sam"),
            Some("standard"),
            Some(false),
            Some("site"),
            Some("front-42")
        ),
        "{sam}"
    );
    assert!(sam["protection"].is_null());
    assert_eq!(e[2]["request_id"], made.as_str());
    assert_eq!(
        (
            e[3]["status"].as_u64(),
            e[3]["attempts"].as_u64(),
            e[3]["upstream"].is_null()
        ),
        (Some(431), Some(0), true),
        "{}",
        e[3]
    );
    // The journey keeps each step's id: a step leads to the access log and the application's logs.
    let (_, gina) = get(
        &c,
        format!("http://{}/customers/gina", running.admin().unwrap()),
        &[],
    )
    .await;
    let gina: serde_json::Value = serde_json::from_str(&gina).unwrap();
    assert_eq!(gina["journey"][0]["request_id"], id.as_str(), "{gina}");
    let (_, sam) = get(
        &c,
        format!("http://{}/customers/sam", running.admin().unwrap()),
        &[],
    )
    .await;
    let sam: serde_json::Value = serde_json::from_str(&sam).unwrap();
    let ids: Vec<&str> = sam["journey"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["request_id"].as_str().unwrap())
        .collect();
    // The refused request too, under the id its 431 and its log line carry.
    let refused = e[3]["request_id"].as_str().unwrap();
    assert_eq!(ids, vec!["front-42", made.as_str(), refused], "{sam}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o007,
        0,
        "customer ids and addresses are not for every local user"
    );
    // Nothing dropped, every line counted.
    let (_, metrics) = get(
        &c,
        format!("http://{}/metrics", running.admin().unwrap()),
        &[],
    )
    .await;
    assert_eq!(
        sample(
            &metrics,
            "usher_access_log_lines_total",
            &[("outcome", "written")]
        ),
        Some(4.0)
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_combined_format_and_query_strings_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("web").await.unwrap();
    let log = dir.path().join("access.log");
    let text = shop(&origin, &log, "combined", "").replace(
        "format = \"combined\"",
        "format = \"combined\"\nquery = true",
    );
    let running = usher::server::spawn(usher::Config::parse(&text, dir.path()).unwrap()).unwrap();
    let (status, _) = get(
        &client(),
        format!("http://{}/products/1?color=red", running.listen()),
        &[("x-customer-id", "sam"), ("x-request-id", "r-1")],
    )
    .await;
    assert_eq!(status, 200);
    let l = lines(&log, 1);
    assert!(
        l[0].starts_with("127.0.0.1 - sam [")
            && l[0].contains("] \"GET /products/1?color=red HTTP/1.1\" 200 ")
            && l[0].contains(" request_id=r-1 ")
            && l[0].contains(" route=site ")
            && l[0].contains(" tier=standard ")
            && l[0].ends_with(" protected=no"),
        "{}",
        l[0]
    );
    running.stop();
}

#[test]
fn logrotate_moves_the_file_and_sigusr1_opens_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(Origin::start_local("web")).unwrap();
    let log = dir.path().join("access.log");
    let text = shop(&origin, &log, "json", "");
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = [\""))
        .and_then(|l| l.strip_suffix("\"]"))
        .unwrap()
        .to_string();
    let cfg = dir.path().join("usher.toml");
    std::fs::write(&cfg, &text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    usher::server::wait_listening(listen.parse().unwrap(), Duration::from_secs(20)).unwrap();
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{listen}{path}"))
            .output()
            .expect("curl is installed (scripts/test installs it)");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    };
    get("/before");
    lines(&log, 1);
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap()
        .success());
    // The signal is handled off the request path: wait until the new file is there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while !log.exists() {
        n += 1;
        get(&format!("/after-{n}"));
        assert!(Instant::now() < deadline, "no new file after SIGUSR1");
        std::thread::sleep(Duration::from_millis(100));
    }
    get("/last");
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log).unwrap();
    assert!(old.contains("\"/before\""), "{old}");
    assert!(new.contains("\"/last\""), "written out at the stop: {new}");
    // Every request is in one of the two, once.
    let total = old.lines().count() + new.lines().count();
    assert_eq!(total, n + 2, "old: {old}\nnew: {new}");
}

/// An access log nobody reads (standard output into a pipe that is never drained, as a stuck log
/// driver leaves it) holds up neither the requests nor the end: SIGTERM still writes the state
/// snapshot and the process exits.
#[test]
fn a_stalled_access_log_keeps_neither_requests_nor_the_snapshot_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(Origin::start_local("web")).unwrap();
    let text = shop(&origin, std::path::Path::new("-"), "json", "")
        .replace("path = \"-\"", "path = \"-\"\nqueue = 16");
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = [\""))
        .and_then(|l| l.strip_suffix("\"]"))
        .unwrap()
        .to_string();
    let cfg = dir.path().join("usher.toml");
    std::fs::write(&cfg, &text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped()) // held, never read
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    usher::server::wait_listening(listen.parse().unwrap(), Duration::from_secs(20)).unwrap();
    // 2 KiB paths: 200 lines are far more than the 64 KiB a pipe holds.
    let path = format!("/{}", "p".repeat(2000));
    let started = Instant::now();
    rt.block_on(async {
        let c = client();
        for i in 0..200 {
            let id = format!("c{i}");
            let (status, _) = get(
                &c,
                format!("http://{listen}{path}?{i}"),
                &[("x-customer-id", id.as_str())],
            )
            .await;
            assert_eq!(status, 200);
        }
    });
    let served_in = started.elapsed();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let snapshot = dir.path().join("usher-state/usher.snapshot");
    assert!(snapshot.exists(), "the state snapshot was written");
    eprintln!("200 requests with the log stalled: {served_in:?}");
    drop(child);
}
