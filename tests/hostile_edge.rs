//! The edge under hostile clients, from a review: HTTP/2 connections that never send a request
//! and ones that idle, a short HTTP/1.0 request on an h2c listener, a bare `Upgrade` header used
//! to lift the upstream read timeout.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use usher::origin::Origin;

fn plain_config(origin: &Origin, dir: &std::path::Path) -> usher::Config {
    config(
        &format!(
            "[server]\nlisten = [\"{}\"]\nadmin = \"{}\"\nh2c = true\nhead_timeout = \"1s\"\nidle_timeout = \"2s\"\n[[pools]]\nname = \"web\"\nupstreams = [\"{}\"]\nread_timeout = \"1s\"\n[[routes]]\nname = \"all\"\npool = \"web\"\n",
            free_addr(),
            free_addr(),
            origin.addr
        ),
        dir,
    )
}

/// Reads until the server closes; how long that took (at most `within`).
async fn closed_after(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_connection_without_a_whole_request_head_is_closed_at_the_head_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("web").await.unwrap();
    let running = usher::server::spawn(plain_config(&origin, dir.path())).unwrap();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let settings = b"\0\0\0\x04\0\0\0\0\0".to_vec();
    // A HEADERS frame (END_HEADERS) that announces 100 bytes and sends 10 of them.
    let mut stalled = b"\0\0\x64\x01\x04\0\0\0\x01".to_vec();
    stalled.extend_from_slice(&[0x82; 10]);
    for (what, opening) in [
        ("only its preface", preface.clone()),
        (
            "a header block begun and stalled",
            [preface, settings, stalled].concat(),
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(running.listen())
            .await
            .unwrap();
        s.write_all(&opening).await.unwrap();
        let took = closed_after(&mut s, Duration::from_secs(5)).await;
        // At the 1 s head timeout, not at the 2 s idle timeout.
        assert!(
            took.is_some_and(|t| t < Duration::from_millis(1800)),
            "{what}: closed after {took:?} with a 1 s head timeout"
        );
    }
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("web").await.unwrap();
    let running = usher::server::spawn(plain_config(&origin, dir.path())).unwrap();
    // One request over h2c with prior knowledge (hyper's client), then the connection idles.
    let tcp = tokio::net::TcpStream::connect(running.listen())
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(format!("http://{}/x", running.listen()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let adm = running.admin().unwrap();
    let open = || async {
        let (_, m) = get(&client(), format!("http://{adm}/metrics"), &[]).await;
        sample(
            &m,
            "usher_connections_open_by_protocol",
            &[("listener", "proxy"), ("protocol", "http")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(open().await, 1.0);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(open().await, 0.0, "closed after the 2 s idle timeout");
    assert!(driver.is_finished(), "the client saw its connection end");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_http10_request_on_an_h2c_listener_is_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("web").await.unwrap();
    let running = usher::server::spawn(plain_config(&origin, dir.path())).unwrap();
    // Shorter than HTTP/2's 24-byte preface; PUT, POST and PATCH even share its first letter.
    for request in ["GET", "PUT", "POST", "PATCH"].map(|m| format!("{m} / HTTP/1.0\r\n\r\n")) {
        let mut s = tokio::net::TcpStream::connect(running.listen())
            .await
            .unwrap();
        let t = Instant::now();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_millis(900), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{request:?} answered before the head timeout"))
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "{request:?}: {answer}"
        );
        assert!(t.elapsed() < Duration::from_millis(900));
    }
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_upgrade_header_does_not_lift_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("web").await.unwrap();
    origin.behavior.set_delay(Duration::from_secs(10));
    let running = usher::server::spawn(plain_config(&origin, dir.path())).unwrap();
    let c = client();
    for upgrade in ["websocket", "h2c", "anything"] {
        let t = Instant::now();
        let (status, _) = get(
            &c,
            format!("http://{}/hang", running.listen()),
            &[("upgrade", upgrade), ("connection", "upgrade")],
        )
        .await;
        assert_eq!(status, 504, "Upgrade: {upgrade}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "Upgrade: {upgrade} waited {:?}",
            t.elapsed()
        );
    }
    running.stop();
}
