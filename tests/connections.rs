//! Hostile connections against a real `usher run` whose open-files limit is small (512, so the
//! connection cap it derives is 64): idle connections and a slowloris fill the cap, connections past
//! it are refused, the admitted ones are cut at the head timeout with 408, a kept-alive connection is
//! closed at the idle timeout, and through all of it a normal client that holds keep-alive
//! connections keeps 100% success, its requests reaching the origin over new upstream connections,
//! and the admin API keeps answering.

mod common;

use common::process::Proc;
use common::*;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
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

async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    // A connection of its own each time: these tests set a 2 s idle timeout, which usher's
    // admin listener keeps too, and a pooled connection sent on just as usher closes it for
    // idleness is reset (it happened in a suite run, after the 2 s idle-close check).
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let (status, text) = get(&fresh, format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(status, 200);
    sample(&text, name, labels).unwrap_or(0.0)
}

/// `usher_connections_refused_total` of the proxy listener for `reason`.
async fn refused_total(admin: SocketAddr, reason: &str) -> f64 {
    let labels = [("listener", "proxy"), ("reason", reason)];
    metric(admin, "usher_connections_refused_total", &labels).await
}

/// An HTTP/2 (h2c, prior knowledge) client connection to `listen`: its sender, and the
/// connection future to drive.
async fn h2c(
    listen: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    hyper::client::conn::http2::Connection<
        hyper_util::rt::TokioIo<TcpStream>,
        http_body_util::Empty<bytes::Bytes>,
        hyper_util::rt::TokioExecutor,
    >,
) {
    let tcp = TcpStream::connect(listen).await.unwrap();
    hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap()
}

/// The two tests load the machine and time what they see: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_connections_are_cut_on_time_while_a_normal_client_keeps_full_success() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("o").await.unwrap();
    // Every request through usher then needs a new upstream connect: the descriptors that a
    // shortage at the cap would fail. (A pool's reuse of idle connections depends on timing.)
    origin.behavior.set_one_answer_per_connection(true);
    let (listen, admin) = (free_addr(), free_addr());
    let path = dir.path().join("usher.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\nhead_timeout = \"1s\"\nidle_timeout = \"2s\"\n\
             [[pools]]\nname = \"p\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
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

    // The normal client: eight kept-alive connections, a request every 30 ms or so on each, each
    // request a new upstream connect.
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut normal = Vec::new();
    let origin_conns_before = origin.behavior.connections();
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
        let open = metric(admin, "usher_connections_open", &labels).await;
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
        metric(admin, "usher_connections_limit", &labels).await,
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
        refused_total(admin, "capacity").await,
        (IDLE - admitted_idle) as f64
    );
    assert_eq!(
        refused_total(admin, "head_timeout").await,
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
        connects >= ok,
        "every request at the cap connected to the origin anew ({connects} for {ok})"
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
    assert!(metric(admin, "usher_connections_idle_closed_total", &labels).await >= 1.0);
}

async fn futures_join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Starts `usher run` on `toml` with the open-files limit at [`OPEN_FILES`]; waits for its admin API.
async fn usher_at_the_limit(dir: &std::path::Path, toml: &str, admin: SocketAddr) -> Proc {
    let path = dir.join("usher.toml");
    std::fs::write(&path, toml).unwrap();
    let log = std::fs::File::create(dir.join("usher.log")).unwrap();
    let p = Proc(
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
    p
}

/// HTTP/2 multiplies requests per connection, and each request in flight holds an upstream
/// connection: six h2c connections of 100 slow streams each would want 600 descriptors where the
/// limit holds 512. The streams past what the budget leaves for upstreams (2 x 64 - 2 x 6 = 116)
/// are answered 503 at once, none fails for want of a descriptor, and the admin API answers
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_the_descriptors_left_for_upstreams_are_refused_not_failed() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const CONNS: usize = 6;
    const STREAMS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("o").await.unwrap();
    origin.behavior.set_delay(Duration::from_secs(2));
    let (listen, admin) = (free_addr(), free_addr());
    let _usher = usher_at_the_limit(
        dir.path(),
        &format!(
            "[server]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\nh2c = true\n\
             [[pools]]\nname = \"p\"\nupstreams = [\"{}\"]\nread_timeout = \"10s\"\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            origin.addr
        ),
        admin,
    )
    .await;
    let mut senders = Vec::new();
    for _ in 0..CONNS {
        let (send, conn) = h2c(listen).await;
        tokio::spawn(conn);
        senders.push(send);
    }
    // Every connection in before the first stream: one that arrived while the streams held the
    // budget would be refused (as the seventh is, below).
    let c = client();
    let labels = [("listener", "proxy")];
    let opened = Instant::now();
    while metric(admin, "usher_connections_open", &labels).await < CONNS as f64 {
        assert!(
            opened.elapsed() < Duration::from_secs(5),
            "usher did not take the {CONNS} connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut tasks = Vec::new();
    for (c, send) in senders.iter().enumerate() {
        for s in 0..STREAMS {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                let req = hyper::Request::builder()
                    .uri(format!("http://{listen}/item/{c}/{s}"))
                    .header("x-customer-id", format!("c{c}"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                match send.send_request(req).await {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.headers()
                            .get("retry-after")
                            .map(|v| v.to_str().unwrap_or("").to_string()),
                    ),
                    Err(e) => (0, Some(format!("{e:?}"))),
                }
            }));
        }
    }
    // While the slow streams are held: the reserve kept the admin API its descriptors.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, _) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(
        status, 200,
        "the admin API answers while the streams are held"
    );
    // A new connection now would want descriptors the streams hold: refused, and told so in
    // HTTP/2, as a GOAWAY that processed nothing (not an HTTP/1.1 503 read as a broken frame).
    let refused_before = refused_total(admin, "capacity").await;
    let (_send, conn) = h2c(listen).await;
    let err = tokio::time::timeout(Duration::from_secs(2), conn)
        .await
        .expect("the refused connection was left open")
        .expect_err("the seventh connection was taken");
    let said = format!("{err:?}");
    assert!(
        said.contains("GoAway") && said.contains("REFUSED_STREAM") && said.contains("Remote"),
        "the refused h2c connection got {said}"
    );
    assert_eq!(refused_total(admin, "capacity").await, refused_before + 1.0);
    let answers = futures_join(tasks).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    println!(
        "{} streams: {ok} served, {} refused with 503",
        answers.len(),
        busy.len()
    );
    let mut other: std::collections::BTreeMap<String, usize> = Default::default();
    for (status, said) in answers.iter().filter(|(s, _)| *s != 200 && *s != 503) {
        *other.entry(format!("{status} {said:?}")).or_default() += 1;
    }
    if !other.is_empty() {
        let log = std::fs::read_to_string(dir.path().join("usher.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!("every stream answered 200 or 503; not these (0: no answer): {other:?}\nusher's log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    assert!(
        busy.iter().all(|(_, ra)| ra.as_deref() == Some("1")),
        "503s say when to retry"
    );
    let room = 2 * CAP - 2 * CONNS;
    assert!(ok >= 1 && ok <= room, "{ok} served, at most {room} at once");
    let streams_refused = refused_total(admin, "streams").await;
    assert_eq!(streams_refused, busy.len() as f64);
    let (_, text) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    let local = sample(
        &text,
        "usher_requests_total",
        &[
            ("route", "r"),
            ("upstream", "none"),
            ("outcome", "local_resource"),
        ],
    )
    .unwrap_or(0.0);
    assert_eq!(
        local,
        busy.len() as f64,
        "counted as usher's own shortage, against no upstream"
    );
    // Once they are done, a new stream gets through.
    let (mut send, conn) = h2c(listen).await;
    tokio::spawn(conn);
    origin.behavior.set_delay(Duration::ZERO);
    let req = hyper::Request::builder()
        .uri(format!("http://{listen}/after"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
}
