//! Open-loop load at a fixed rate, corrected for coordinated omission: request i is due at
//! `start + i / rate` whatever happened to the ones before it, and a request that cannot be sent
//! when due (every connection busy) is charged from when it was due. A proxy that stalls is charged
//! for every request its stall delayed, instead of the generator politely waiting for it (which is
//! how a closed-loop tool such as wrk hides a 1 s hiccup behind a good p99).
//!
//! Plain HTTP/1.1 over keep-alive TCP, no client library: the generator must cost little next to
//! what it measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Standard,
    Protected,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub class: Class,
}

impl Request {
    fn wire(&self) -> Vec<u8> {
        let mut s = format!("GET {} HTTP/1.1\r\nHost: bench\r\n", self.path);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was due, from the start of the run.
    pub due: Duration,
    /// From when it was due to the end of the response.
    pub latency: Duration,
    /// 0 when the request failed at the transport level.
    pub status: u16,
    pub class: Class,
    /// The `x-origin` header of the answer, when there was one.
    pub origin: Option<Arc<str>>,
}

struct Response {
    status: u16,
    origin: Option<Arc<str>>,
}

async fn read_response(
    r: &mut BufReader<TcpStream>,
    line: &mut String,
) -> std::io::Result<Response> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad response");
    line.clear();
    if r.read_line(line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut length = 0usize;
    let mut chunked = false;
    let mut origin = None;
    loop {
        line.clear();
        if r.read_line(line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse().map_err(|_| bad())?;
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            } else if k.eq_ignore_ascii_case("x-origin") {
                origin = Some(Arc::from(v));
            }
        }
    }
    let mut sink = vec![0u8; 0];
    if chunked {
        loop {
            line.clear();
            r.read_line(line).await?;
            let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| bad())?;
            sink.resize(size + 2, 0);
            r.read_exact(&mut sink).await?;
            if size == 0 {
                break;
            }
        }
    } else if length > 0 {
        sink.resize(length, 0);
        r.read_exact(&mut sink).await?;
    }
    Ok(Response { status, origin })
}

/// Runs `rate` requests per second against `target` for `duration`, cycling through `requests`,
/// over a pool of keep-alive connections that grows as needed up to `max_conns`. Every request is
/// dispatched when due on any idle connection: one slow answer holds up nobody else, as with real
/// customers. Latency is counted from when the request was sent, or from when it was due if it had
/// to wait for a connection (the pool was exhausted: the proxy is not keeping up, and that wait is
/// its doing). The dispatcher's own timer slop (tokio's millisecond timer) is not charged.
pub async fn open_loop(
    target: SocketAddr,
    rate: f64,
    duration: Duration,
    max_conns: usize,
    requests: Arc<Vec<Request>>,
    timeout: Duration,
) -> Vec<Sample> {
    let total = (rate * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let wires: Arc<Vec<Vec<u8>>> = Arc::new(requests.iter().map(Request::wire).collect());
    let pool: Arc<std::sync::Mutex<Vec<BufReader<TcpStream>>>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_conns.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    for i in 0..total {
        let due = interval * i as u32;
        tokio::time::sleep_until((start + due).into()).await;
        let k = (i as usize) % requests.len();
        let (wires, pool, slots, tx, class) = (
            wires.clone(),
            pool.clone(),
            slots.clone(),
            tx.clone(),
            requests[k].class,
        );
        tokio::spawn(async move {
            let (permit, waited) = match slots.clone().try_acquire_owned() {
                Ok(p) => (p, false),
                Err(_) => match slots.acquire_owned().await {
                    Ok(p) => (p, true),
                    Err(_) => return,
                },
            };
            let from = if waited { start + due } else { Instant::now() };
            let mut pooled = pool.lock().map(|mut p| p.pop()).unwrap_or(None);
            let mut line = String::new();
            // A pooled connection the server has closed meanwhile (nginx closes one after 1,000
            // requests) fails at once: like any HTTP client, try again on a new connection.
            let mut result = None;
            for _ in 0..2 {
                let reused = pooled.is_some();
                let r = tokio::time::timeout(timeout, async {
                    let mut c = match pooled.take() {
                        Some(c) => c,
                        None => {
                            let s = TcpStream::connect(target).await?;
                            s.set_nodelay(true)?;
                            BufReader::new(s)
                        }
                    };
                    c.get_mut().write_all(&wires[k]).await?;
                    let r = read_response(&mut c, &mut line).await?;
                    Ok::<_, std::io::Error>((r, c))
                })
                .await;
                let stale = matches!(&r, Ok(Err(e)) if reused && e.kind() == std::io::ErrorKind::UnexpectedEof);
                result = Some(r);
                if !stale {
                    break;
                }
            }
            let (status, origin) = match result {
                Some(Ok(Ok((r, c)))) => {
                    if let Ok(mut p) = pool.lock() {
                        p.push(c);
                    }
                    (r.status, r.origin)
                }
                _ => (0, None),
            };
            drop(permit);
            let _ = tx.send(Sample {
                due,
                latency: Instant::now().saturating_duration_since(from),
                status,
                class,
                origin,
            });
        });
    }
    drop(tx);
    let mut all = Vec::with_capacity(total as usize);
    while let Some(s) = rx.recv().await {
        all.push(s);
    }
    all.sort_by_key(|s| s.due);
    all
}

/// p in 0..=1 of sorted latencies.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}
