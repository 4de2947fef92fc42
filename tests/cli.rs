//! The `usher` binary itself: `check` lists every error, `run` refuses a bad config, `demo` starts,
//! serves the admin API, and stops cleanly on Ctrl-C (SIGINT).

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
}

#[test]
fn demo_serves_customers_and_stops_on_ctrl_c() {
    let (listen, admin) = (free_addr(), free_addr());
    let mut child = Command::new(USHER)
        .args([
            "demo",
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
            "--brownout-after",
            "1s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    usher::server::wait_listening(admin, Duration::from_secs(20)).expect("demo admin API comes up");

    // Within a few seconds the synthetic customers are tracked, alice (gold, from the table) included.
    let deadline = Instant::now() + Duration::from_secs(20);
    let alice = loop {
        let body = http_get(admin, "/customers/alice");
        let json: serde_json::Value = body
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or_default();
        if json["requests"].as_u64().unwrap_or(0) >= 3 {
            break json;
        }
        assert!(Instant::now() < deadline, "alice never showed up: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alice["tier"], "gold", "{alice}");
    assert!(!alice["journey"].as_array().unwrap().is_empty());
    assert!(http_get(admin, "/customers?worst=3").contains("\"customers\""));

    // The origin that browns out is ejected, and so is the one slow on /checkout, each with its
    // reason; meanwhile alice (gold) is served well.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let ups = json_body(&http_get(admin, "/upstreams"));
        let ejected: Vec<&serde_json::Value> = ups["upstreams"]
            .as_array()
            .map(|a| a.iter().filter(|u| u["state"] == "ejected").collect())
            .unwrap_or_default();
        if ejected.len() == 2 {
            assert!(
                ejected.iter().all(|u| u["why"]["detail"].is_string()),
                "{ups}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo's sick origins were never ejected: {ups}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let alice = json_body(&http_get(admin, "/customers/alice"));
    assert_eq!(alice["state"], "ok", "{alice}");

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        out.contains(&format!("curl http://{admin}/customers?worst=5")),
        "{out}"
    );
    assert!(out.contains("usher demo: stopping"), "{out}");
    // The follow-up events are left behind in a JSON-lines file whose place the demo printed.
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("usher demo: events kept in "))
        .unwrap_or_else(|| panic!("no events file in: {out}"));
    let events = std::fs::read_to_string(kept).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"type\":\"usher.upstream.ejected\"")),
        "{events}"
    );
    let _ = std::fs::remove_dir_all(std::path::Path::new(kept).parent().unwrap());
    // Its listeners are released.
    assert!(std::net::TcpListener::bind(listen).is_ok());
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
