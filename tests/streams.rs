//! WebSocket and streaming answers through usher: a real WebSocket client and server
//! (tokio-tungstenite) and a streaming origin (hyper). A connection or a stream that lasts is
//! judged by the time to its answer's head, not by its length, and nothing cuts it short.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server; also answers plain HTTP with 426.
async fn echo_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    addr
}

/// An origin whose answer's head comes at once and whose body trickles: `chunks` pieces, one
/// every `every`.
async fn trickling_origin(chunks: usize, every: Duration) -> std::net::SocketAddr {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        // `/fast` paths answer in one piece at once.
                        let (chunks, every) = if req.uri().path().ends_with("/fast") {
                            (1, Duration::ZERO)
                        } else {
                            (chunks, every)
                        };
                        let stream = futures::stream::unfold(0usize, move |i| async move {
                            if i == chunks {
                                return None;
                            }
                            tokio::time::sleep(every).await;
                            let frame: Result<Frame<bytes::Bytes>, std::convert::Infallible> =
                                Ok(Frame::data(bytes::Bytes::from(format!("data: {i}\n\n"))));
                            Some((frame, i + 1))
                        });
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(StreamBody::new(stream))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn config_for(
    origins: &[std::net::SocketAddr],
    dir: &std::path::Path,
    streaming: bool,
) -> usher::Config {
    let origin = origins
        .iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join("\", \"");
    config(
        &format!(
            r#"
[identity]
tier = [{{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }}]
[[tiers]]
name = "gold"
protected = true
[[tiers]]
name = "standard"
[protection]
critical_for_everyone = false
[[pools]]
name = "web"
upstreams = ["{origin}"]
read_timeout = "1s"
[[routes]]
name = "live"
match = {{ path_prefix = "/live" }}
pool = "web"
critical = true
target = "100ms"
streaming = {streaming}
[[routes]]
name = "site"
pool = "web"
target = "100ms"
"#
        ),
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_through_usher_echoes_stays_open_and_is_judged_by_its_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let origin = echo_server().await;
    let running = usher::server::spawn(config_for(&[origin], dir.path(), false)).unwrap();
    let url = format!("ws://{}/chat", running.listen());
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-customer-id", "wendy".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgraded through usher");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back, Message::text(format!("hello {i}")));
        // Quiet for longer than the pool's 1 s read timeout and 10x the route's target.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    ws.close(None).await.unwrap();
    drop(ws);

    // Recorded when it ended: one request, satisfied, its latency the upgrade's.
    let adm = running.admin().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let wendy = loop {
        let (s, body) = get(&client(), format!("http://{adm}/customers/wendy"), &[]).await;
        if s == 200 {
            break serde_json::from_str::<serde_json::Value>(&body).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(wendy["requests"], 1, "{wendy}");
    assert_eq!(wendy["frustrated"], 0, "{wendy}");
    let step = &wendy["journey"][0];
    assert_eq!(step["status"], 101, "{wendy}");
    assert!(step["latency_ms"].as_f64().unwrap() < 100.0, "{wendy}");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_route_is_judged_by_its_first_byte_and_a_protected_stream_is_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    // Ten events, one every 300 ms: 3 s in all, each pause longer than any try timeout. Two
    // origins, so that a protected try could be cut short and retried on the other.
    let origins = [
        trickling_origin(10, Duration::from_millis(300)).await,
        trickling_origin(10, Duration::from_millis(300)).await,
    ];
    let running = usher::server::spawn(config_for(&origins, dir.path(), true)).unwrap();
    let c = client();
    let url = |p: &str| format!("http://{}{p}", running.listen());
    // Enough fast answers on the route first for its p99, and so a protected try timeout of a
    // few tens of milliseconds, to exist (100 in its window, refreshed every second).
    for _ in 0..120 {
        let (s, _) = get(&c, url("/live/fast"), &[("x-customer-id", "warm")]).await;
        assert_eq!(s, 200);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for (who, path, tier) in [
        ("sue", "/live/feed", "gold"),
        ("tom", "/live/feed", "standard"),
        ("sid", "/site/page", "standard"),
    ] {
        let resp = c
            .get(url(path))
            .header("x-customer-id", who)
            .header("x-customer-tier", tier)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        assert_eq!(
            body.matches("data: ").count(),
            10,
            "{who}: the whole stream: {body}"
        );
    }
    let adm = running.admin().unwrap();
    let customer = |id: &'static str| {
        let c = c.clone();
        async move { json(&c, format!("http://{adm}/customers/{id}")).await }
    };
    for id in ["sue", "tom"] {
        let v = customer(id).await;
        assert_eq!(v["frustrated"], 0, "{v}");
        assert!(
            v["journey"][0]["latency_ms"].as_f64().unwrap() < 300.0,
            "{v}"
        );
    }
    // The same answer on a route that does not stream is judged whole: 3 s against 100 ms.
    let sid = customer("sid").await;
    assert_eq!(sid["frustrated"], 1, "{sid}");
    assert!(
        sid["journey"][0]["latency_ms"].as_f64().unwrap() >= 2900.0,
        "{sid}"
    );
    running.stop();
}
