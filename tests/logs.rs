//! The process log as tools read it, through the real `usher` binary with standard error piped
//! (not a terminal): `--log-format json` writes one JSON object per line, neither format writes
//! colour codes to a pipe, and a flood of failing requests (Pingora's "Fail to proxy" ERROR for
//! each) is held to a few lines a second with a summary of what was suppressed, while usher's own
//! warnings all pass. Also what `/metrics` of that process offers operators: the `process_*`
//! family, `usher_build_info`, `usher_start_time_seconds`, and buckets at a route's target T and 4T.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USHER: &str = env!("CARGO_BIN_EXE_usher");

/// Requests sent to an upstream that refuses connections: each one is a Pingora ERROR line.
const FLOOD: usize = 200;

struct Run {
    stderr: String,
    metrics: String,
    /// How long the flood took.
    flood: Duration,
}

/// A blocking HTTP/1.1 GET with `Connection: close`.
fn http_get(addr: SocketAddr, path: &str) -> String {
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

/// Runs `usher run` with `args`, floods it with failing requests, reads `/metrics`, stops it with
/// SIGTERM and returns what it wrote to standard error.
fn run_usher(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let path = dir.path().join("usher.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\n\
             [[pools]]\nname = \"web\"\nupstreams = [\"{}\"]\n\
             [[routes]]\nname = \"checkout\"\npool = \"web\"\ntarget = \"300ms\"\n",
            dead_addr()
        ),
    )
    .unwrap();
    let mut child = Command::new(USHER)
        .args(["run", "--config"])
        .arg(&path)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read standard error as it comes, so a full pipe never blocks usher.
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        String::from_utf8(out).expect("the log is UTF-8")
    });
    usher::server::wait_listening(admin, Duration::from_secs(20)).expect("usher comes up");
    // The admin listener may be up a moment before the proxy's: a refused connect reads as "".
    usher::server::wait_listening(listen, Duration::from_secs(20)).expect("the proxy comes up");
    let started = Instant::now();
    for _ in 0..FLOOD {
        let answer = http_get(listen, "/checkout");
        assert!(answer.starts_with("HTTP/1.1 5"), "{answer}");
    }
    let flood = started.elapsed();
    let metrics = http_get(admin, "/metrics");
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "usher did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    Run {
        stderr: reader.join().unwrap(),
        metrics,
        flood,
    }
}

fn no_colour(log: &str) {
    assert!(
        !log.contains("\x1b["),
        "colour codes written to a pipe:\n{log}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_and_a_flood_of_pingora_errors_is_held_back() {
    let run = run_usher(&["--log-format", "json"]);
    no_colour(&run.stderr);
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{}", run.stderr);
    for l in &lines {
        assert!(l.is_object(), "{l}");
        assert!(l["timestamp"].is_string(), "no timestamp: {l}");
        assert!(l["level"].is_string(), "no level: {l}");
        assert!(l["fields"]["message"].is_string(), "no fields.message: {l}");
        assert!(l["target"].is_string(), "no target: {l}");
    }
    let from = |target: &str, level: &str| {
        lines
            .iter()
            .filter(|l| l["target"] == target && l["level"] == level)
            .count()
    };
    // Each failing request is one "Fail to proxy" ERROR of pingora_proxy; at most 10 a second
    // (one-second windows, so the flood may touch one more than it lasted) were written.
    let shown = from("pingora_proxy", "ERROR");
    let allowed = 10 * (run.flood.as_secs() as usize + 2);
    assert!(
        shown >= 1 && shown <= allowed && shown < FLOOD,
        "{shown} pingora_proxy errors written for {FLOOD} failures in {:?}",
        run.flood
    );
    // ... and the rest were counted and said to be suppressed, at the latest as usher stopped.
    let suppressed: u64 = lines
        .iter()
        .filter(|l| l["target"] == "usher::logging" && l["fields"]["source"] == "pingora_proxy")
        .map(|l| l["fields"]["suppressed"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        suppressed as usize + shown >= FLOOD,
        "{shown} written and {suppressed} said suppressed, of {FLOOD}"
    );
    // usher's own warnings are never held back: the upstream's ejection is there.
    assert!(
        lines.iter().any(|l| l["target"] == "usher::engine"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("upstream ejected"))),
        "{}",
        run.stderr
    );
    // The end is said (a line of another task may still follow it: which comes last is a race).
    assert!(
        lines.iter().rev().take(5).any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("usher stopped"))),
        "no \"usher stopped\" among the last lines:\n{}",
        run.stderr
    );
}

#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    for args in [&[][..], &["--log-format", "text"][..]] {
        let run = run_usher(args);
        no_colour(&run.stderr);
        assert!(run.stderr.contains("usher stopped"), "{}", run.stderr);
        assert!(run.stderr.contains(" ERROR "), "{}", run.stderr);
        assert!(
            run.stderr.contains("suppressed") && run.stderr.contains("pingora_proxy"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn metrics_hold_process_build_and_start_figures_and_apdex_buckets() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let run = run_usher(&[]);
    let m = &run.metrics;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(sample(m, name, &[]).is_some(), "{name} missing:\n{m}");
    }
    let info = m
        .lines()
        .find(|l| l.starts_with("usher_build_info{"))
        .unwrap_or_else(|| panic!("no usher_build_info:\n{m}"));
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && info.contains("commit=\"")
            && info.ends_with("} 1"),
        "{info}"
    );
    let start = sample(m, "usher_start_time_seconds", &[]).expect("usher_start_time_seconds");
    assert!(start >= before - 1.0 && start < before + 60.0, "{start}");
    // The checkout route's target is 300 ms: buckets at T and 4T make its Apdex a PromQL
    // expression. Every request failed fast, so all are at or under both.
    let bucket = |le: &str| {
        sample(
            m,
            "usher_request_duration_seconds_bucket",
            &[("route", "checkout"), ("le", le)],
        )
    };
    assert_eq!(bucket("0.3"), Some(FLOOD as f64), "{m}");
    assert_eq!(bucket("1.2"), Some(FLOOD as f64), "{m}");
}
