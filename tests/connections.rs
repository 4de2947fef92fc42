//! Hostile connections against a real `usher run` whose open-files limit is small (512, so the
//! connection cap it derives is 64): idle connections and a slowloris fill the cap, connections past
//! it are refused, the admitted ones are cut at the head timeout with 408, a kept-alive connection is
//! closed at the idle timeout, and through all of it a normal client that holds keep-alive
//! connections keeps 100% success, its requests reaching the origin over new upstream connections,
//! and the admin API keeps answering.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use usher::origin::Origin;

const USHER: &str = env!("CARGO_BIN_EXE_usher");
/// Open files for the usher under test: with 128 idle upstream connections and 256 reserved,
/// `(512 - 384) / 2` = 64 downstream connections.
const OPEN_FILES: u64 = 512;
const CAP: usize = 64;
const NORMAL: usize = 8;
const SLOWLORIS: usize = 10;
const IDLE: usize = 150;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request on a kept-alive connection; its status, or the error that ended the connection.
async fn roundtrip(conn: &mut BufReader<TcpStream>, n: u64) -> std::io::Result<u16> {
    let req = format!("GET /item/{n} HTTP/1.1\r\nhost: shop\r\nx-customer-id: normal\r\n\r\n");
    conn.get_mut().write_all(req.as_bytes()).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await?;
    Ok(status)
}

/// Everything the server sends until it closes, and how long after `since` it closed.
async fn until_closed(mut s: TcpStream, since: Instant, within: Duration) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection was still open after {within:?}"
    );
    (got, since.elapsed())
}

async fn metric(
    c: &reqwest::Client,
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let (status, text) = get(c, format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(status, 200);
    sample(&text, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_connections_are_cut_on_time_while_a_normal_client_keeps_full_success() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("o").await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let path = dir.path().join("usher.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\nhead_timeout = \"1s\"\nidle_timeout = \"2s\"\n\
             [[pools]]\nname = \"p\"\nupstreams = [\"{}\"]\nidle_timeout = \"10ms\"\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            origin.addr
        ),
    )
    .unwrap();
    let hard = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    assert!(
        hard == "unlimited" || hard.parse::<u64>().unwrap() >= OPEN_FILES,
        "this test lowers usher's open-files limit to {OPEN_FILES}; the hard limit here is {hard}"
    );
    assert_eq!(usher::transport::fd_budget(OPEN_FILES, 128), CAP);
    let log = std::fs::File::create(dir.path().join("usher.log")).unwrap();
    // `ulimit -n` sets the hard limit too, so usher cannot raise it back.
    let _usher = Proc(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n {OPEN_FILES} && exec \"$0\" run --config \"$1\""
            ))
            .arg(USHER)
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let c = client();
    let started = Instant::now();
    while reqwest::get(format!("http://{admin}/metrics"))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "usher did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The normal client: eight kept-alive connections, a request every 30 ms or so on each. The
    // pool keeps an idle upstream connection about 10 ms, so many requests connect anew: the
    // upstream connects that a descriptor shortage would fail.
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut normal = Vec::new();
    for w in 0..NORMAL {
        let mut conn = BufReader::new(TcpStream::connect(listen).await.unwrap());
        assert_eq!(roundtrip(&mut conn, w as u64).await.unwrap(), 200);
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        normal.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match roundtrip(&mut conn, n).await {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            conn
        }));
    }
    let origin_conns_before = origin.behavior.connections();

    // Slowloris: a request head, one byte every 200 ms, for ever.
    let mut slow = Vec::new();
    for _ in 0..SLOWLORIS {
        let s = TcpStream::connect(listen).await.unwrap();
        let at = Instant::now();
        let (mut rd, mut wr) = s.into_split();
        let trickle = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\nhost: shop\r\nx-padding: "
                .iter()
                .cycle()
            {
                if wr.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        slow.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut got)).await;
            trickle.abort();
            (got, at.elapsed())
        }));
    }
    // Idle: connect and send nothing, far past the cap.
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let s = TcpStream::connect(listen).await.unwrap();
        let at = Instant::now();
        idle.push(tokio::spawn(until_closed(s, at, Duration::from_secs(5))));
    }

    // At the cap: the admin API answers, and says so.
    let labels = [("listener", "proxy")];
    let full = Instant::now();
    loop {
        let open = metric(&c, admin, "usher_connections_open", &labels).await;
        if open == CAP as f64 {
            break;
        }
        assert!(
            full.elapsed() < Duration::from_millis(800),
            "{open} open, not {CAP}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(&c, admin, "usher_connections_limit", &labels).await,
        CAP as f64
    );

    let idle: Vec<(Vec<u8>, Duration)> = futures_join(idle).await;
    let slow: Vec<(Vec<u8>, Duration)> = futures_join(slow).await;
    let admitted_idle = CAP - NORMAL - SLOWLORIS;
    let (mut timed_out, mut refused, mut dropped) = (0, 0, 0);
    for (got, after) in &idle {
        let text = String::from_utf8_lossy(got);
        if text.starts_with("HTTP/1.1 408 ") {
            timed_out += 1;
            assert!(
                *after >= Duration::from_millis(900) && *after < Duration::from_millis(2500),
                "an idle connection was cut after {after:?}, not at the 1 s head timeout"
            );
        } else if text.starts_with("HTTP/1.1 503 ") {
            refused += 1;
            assert!(text.contains("retry-after: 1"), "{text}");
        } else {
            assert!(got.is_empty(), "unexpected answer: {text}");
            dropped += 1;
        }
    }
    let cut: Vec<Duration> = idle
        .iter()
        .chain(&slow)
        .filter(|(got, _)| got.starts_with(b"HTTP/1.1 408 "))
        .map(|(_, after)| *after)
        .collect();
    println!(
        "cut with 408 after {:?} to {:?}",
        cut.iter().min().unwrap(),
        cut.iter().max().unwrap()
    );
    assert_eq!(
        timed_out, admitted_idle,
        "admitted idle connections cut with 408"
    );
    assert_eq!(
        refused + dropped,
        IDLE - admitted_idle,
        "the rest refused at once"
    );
    assert!(refused > 0, "refused connections are told why (503)");
    for (got, after) in &slow {
        let text = String::from_utf8_lossy(got);
        assert!(
            text.starts_with("HTTP/1.1 408 "),
            "slowloris answered {text:?}"
        );
        assert!(
            *after >= Duration::from_millis(900) && *after < Duration::from_millis(2500),
            "a slowloris was cut after {after:?}"
        );
    }
    assert_eq!(
        metric(
            &c,
            admin,
            "usher_connections_refused_total",
            &[("listener", "proxy"), ("reason", "capacity")]
        )
        .await,
        (IDLE - admitted_idle) as f64
    );
    assert_eq!(
        metric(
            &c,
            admin,
            "usher_connections_refused_total",
            &[("listener", "proxy"), ("reason", "head_timeout")]
        )
        .await,
        (admitted_idle + SLOWLORIS) as f64
    );

    // Slots came free: a new client gets in.
    let mut fresh = BufReader::new(TcpStream::connect(listen).await.unwrap());
    assert_eq!(roundtrip(&mut fresh, 0).await.unwrap(), 200);

    // The normal client never noticed, and its requests kept opening upstream connections.
    stop.store(true, Ordering::Relaxed);
    let mut kept = Vec::new();
    for h in normal {
        kept.push(h.await.unwrap());
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "normal client: {ok} ok, {failed} failed; idle: {timed_out} cut at the head timeout, {refused} refused with 503, {dropped} closed at once"
    );
    assert_eq!(failed, 0, "the normal client lost requests at the cap");
    assert!(ok > 100, "the normal client was served throughout ({ok})");
    let connects = origin.behavior.connections() - origin_conns_before;
    println!("upstream connections opened meanwhile: {connects}");
    assert!(
        connects >= 2 * NORMAL as u64,
        "requests at the cap connected to the origin anew ({connects} for {ok})"
    );

    // A kept-alive connection left idle is closed at the idle timeout, quietly.
    let conn = kept.pop().unwrap().into_inner();
    let (got, after) = until_closed(conn, Instant::now(), Duration::from_secs(5)).await;
    println!("an idle kept-alive connection closed after {after:?}");
    assert!(
        got.is_empty(),
        "an idle close says nothing: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        after >= Duration::from_millis(1800) && after < Duration::from_millis(3500),
        "idle for {after:?} before it was closed, not the 2 s idle timeout"
    );
    assert!(metric(&c, admin, "usher_connections_idle_closed_total", &labels).await >= 1.0);
}

async fn futures_join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
