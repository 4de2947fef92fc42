//! Open-loop load at a fixed rate, corrected for coordinated omission, as wrk2 does it: request i is
//! due at `start + i / rate`, connections take the requests in turn, and latency is measured from
//! when a request was due, not from when it was sent. A proxy that stalls is charged for every
//! request its stall delayed, instead of the generator politely waiting for it (which is how a
//! closed-loop tool such as wrk hides a 1 s hiccup behind a good p99).
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

/// Runs `rate` requests per second against `target` for `duration` over `conns` keep-alive
/// connections, cycling through `requests`. Returns one sample per request due.
pub async fn open_loop(
    target: SocketAddr,
    rate: f64,
    duration: Duration,
    conns: usize,
    requests: Arc<Vec<Request>>,
    timeout: Duration,
) -> Vec<Sample> {
    let total = (rate * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let wires: Arc<Vec<Vec<u8>>> = Arc::new(requests.iter().map(Request::wire).collect());
    let conns = conns.max(1) as u64;
    let tasks: Vec<_> = (0..conns)
        .map(|j| {
            let (requests, wires) = (requests.clone(), wires.clone());
            tokio::spawn(async move {
                let mut out = Vec::with_capacity((total / conns + 1) as usize);
                let mut conn: Option<BufReader<TcpStream>> = None;
                let mut line = String::new();
                let mut i = j;
                while i < total {
                    let due = interval * i as u32;
                    tokio::time::sleep_until((start + due).into()).await;
                    let k = (i as usize) % requests.len();
                    let result = tokio::time::timeout(timeout, async {
                        if conn.is_none() {
                            let s = TcpStream::connect(target).await?;
                            s.set_nodelay(true)?;
                            conn = Some(BufReader::new(s));
                        }
                        let c = conn.as_mut().expect("just connected");
                        c.get_mut().write_all(&wires[k]).await?;
                        read_response(c, &mut line).await
                    })
                    .await;
                    let (status, origin) = match result {
                        Ok(Ok(r)) => (r.status, r.origin),
                        _ => {
                            conn = None;
                            (0, None)
                        }
                    };
                    out.push(Sample {
                        due,
                        latency: Instant::now().saturating_duration_since(start + due),
                        status,
                        class: requests[k].class,
                        origin,
                    });
                    i += conns;
                }
                out
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total as usize);
    for t in tasks {
        if let Ok(v) = t.await {
            all.extend(v);
        }
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
