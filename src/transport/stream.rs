//! A downstream stream that keeps its connection's deadlines: the request head must arrive within
//! `head_timeout` (else 408 and close), a kept-alive connection may idle `idle_timeout` (then it is
//! closed quietly, as a client expects of any server).
//!
//! The deadline lives inside the stream because that is where Pingora reads the head: its loop
//! reads until the head parses, each read under a timeout of its own, so only the reads themselves
//! see the whole time a head has taken. The HTTP layer says when a request has started (no deadline
//! while it is served: bodies and responses have their own timeouts) and when it has finished (the
//! idle clock starts; the first byte of the next request starts the head clock). Time is tokio's,
//! so tests can pause it.

use super::h2_start::FirstRequest;
use super::limit::Slot;
use crate::settings::ConnectionLimits;
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Waiting for (the rest of) a request head: the head clock runs.
const HEAD: u8 = 0;
/// A request is being served: no deadline here.
const SERVING: u8 = 1;
/// Between requests: the idle clock runs until the next request's first byte.
const IDLE: u8 = 2;
/// A deadline passed: every further read is the end of the stream.
const EXPIRED: u8 = 3;
/// Not timed here at all (HTTP/2 multiplexes requests; its connection keeps its own idle time,
/// Pingora's `h2_idle_timeout`). An HTTP/2 connection is timed as a head until its first request
/// head is in: the handshake, preface and first whole header block must come within the head
/// timeout, which the stream reads off the bytes themselves ([`FirstRequest`]).
const UNTIMED: u8 = 4;

/// Written, if the socket takes it at once, when a head does not arrive in time.
const HEAD_TIMEOUT_ANSWER: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 41\r\nconnection: close\r\n\r\nthe request head took too long to arrive\n";

pub struct GuardedStream {
    inner: Stream,
    slot: Slot,
    /// Set from the HTTP layer through a shared reference ([`request_started`]); read on each poll.
    phase: AtomicU8,
    /// The phase the timer was last set for.
    armed: u8,
    timer: Pin<Box<Sleep>>,
    head_timeout: Duration,
    idle_timeout: Duration,
    /// Bytes read before the HTTP layer took over ([`GuardedStream::first_byte`], the h2c
    /// preface peek), handed to it first.
    ahead: ReadAhead,
    /// HTTP/2 (by ALPN or h2c preface): untimed from its first request on, never answered 408.
    h2: bool,
    /// Watches an HTTP/2 connection's bytes until its first request head is in.
    awaiting_request: Option<FirstRequest>,
}

impl GuardedStream {
    /// Wraps a freshly accepted `inner`: its head clock starts now.
    pub fn new(inner: Stream, slot: Slot, limits: &ConnectionLimits) -> Self {
        Self::after(inner, slot, limits, Duration::ZERO)
    }

    /// As [`GuardedStream::new`], for a connection that has spent `spent` of its head time
    /// already (on its TLS handshake): the first head gets what is left.
    pub fn after(inner: Stream, slot: Slot, limits: &ConnectionLimits, spent: Duration) -> Self {
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        GuardedStream {
            inner,
            slot,
            phase: AtomicU8::new(HEAD),
            armed: HEAD,
            timer: Box::pin(tokio::time::sleep(
                limits.head_timeout.saturating_sub(spent),
            )),
            head_timeout: limits.head_timeout,
            idle_timeout: limits.idle_timeout,
            ahead: ReadAhead::default(),
            h2,
            awaiting_request: h2.then(FirstRequest::new),
        }
    }

    /// Waits (within the head timeout) for the client to send something; false when it closed or
    /// timed out first, and then there is nothing to serve. Pingora drops a connection whose
    /// request has not begun when it shuts down, so a connection accepted in the last moment
    /// before a graceful stop or upgrade would be lost; once its first byte is here, Pingora
    /// reads on and serves it. Untimed (HTTP/2) streams do not wait.
    pub async fn first_byte(&mut self) -> bool {
        if self.h2 {
            // Its preface is read by Pingora's HTTP/2 handshake, under the head clock.
            return true;
        }
        let mut one = [0u8; 1];
        let mut buf = ReadBuf::new(&mut one);
        let read = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_read(cx, &mut buf)).await;
        match (read, buf.filled()) {
            (Ok(()), [b]) => {
                self.ahead.push(&[*b]);
                true
            }
            _ => false,
        }
    }

    fn arm(&mut self, phase: u8) {
        let after = if phase == HEAD {
            self.head_timeout
        } else {
            self.idle_timeout
        };
        self.timer.as_mut().reset(Instant::now() + after);
        self.armed = phase;
    }

    fn set_phase(&self, to: u8) {
        // A connection whose deadline passed stays closed, and an untimed one stays untimed.
        let _ = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p != EXPIRED && p != UNTIMED).then_some(to)
            });
    }
}

/// The HTTP layer has read a whole request head from `stream`: no deadline while it is served.
/// (An HTTP/2 session has no stream of its own to say this through; its connection tells by
/// itself, see [`FirstRequest`].)
pub fn request_started(stream: Option<&Stream>) {
    if let Some(g) = stream.and_then(|s| s.as_any().downcast_ref::<GuardedStream>()) {
        g.set_phase(SERVING);
    }
}

/// The request on `stream` is finished: the connection idles until the next one begins.
pub fn request_finished(stream: Option<&Stream>) {
    if let Some(g) = stream.and_then(|s| s.as_any().downcast_ref::<GuardedStream>()) {
        g.set_phase(IDLE);
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = this.poll_read_timed(cx, buf);
        if let Some(awaiting) = &mut this.awaiting_request {
            if awaiting.begun_after(&buf.filled()[before..]) {
                this.awaiting_request = None;
                let _ =
                    this.phase
                        .compare_exchange(HEAD, UNTIMED, Ordering::AcqRel, Ordering::Acquire);
            }
        }
        read
    }
}

impl GuardedStream {
    fn poll_read_timed(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            self.ahead.take_into(buf);
            if self.ahead.is_empty() {
                // With the rest of what has arrived, so that the head is read in one go as it
                // would have been; whatever the inner read says now, it says again on the next
                // call.
                let _ = Pin::new(&mut self.inner).poll_read(cx, buf);
            }
            return Poll::Ready(Ok(()));
        }
        let phase = self.phase.load(Ordering::Acquire);
        match phase {
            SERVING | UNTIMED => return Pin::new(&mut self.inner).poll_read(cx, buf),
            EXPIRED => return Poll::Ready(Ok(())),
            _ => {}
        }
        if self.armed != phase {
            self.arm(phase);
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => {
                if phase == IDLE && buf.filled().len() > before {
                    // The next request has begun: from now on its head is on the clock.
                    self.set_phase(HEAD);
                    self.arm(HEAD);
                }
                return Poll::Ready(Ok(()));
            }
            ready_err => return ready_err,
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.phase.store(EXPIRED, Ordering::Release);
        if phase == HEAD {
            self.slot.head_timed_out();
            // Best effort: a client that does not take 200 bytes at once is not waited for. An
            // HTTP/2 client would not understand an HTTP/1.1 answer: it is just closed.
            if !self.h2 {
                if let Poll::Ready(Ok(_)) =
                    Pin::new(&mut self.inner).poll_write(cx, HEAD_TIMEOUT_ANSWER)
                {
                    let _ = Pin::new(&mut self.inner).poll_flush(cx);
                }
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received within server.head_timeout",
            )));
        }
        self.slot.idle_closed();
        // The end of the stream: Pingora closes a kept-alive connection that ends between requests
        // without a word, as it should.
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// What an HTTP/2 connection without TLS (h2c) opens with.
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Pingora peeks a plain connection's first bytes for the h2c preface when h2c is on, and would
/// wait for all 24 of them. Here the peek reads only while what has come could still be the
/// preface: a short HTTP/1 request (`GET / HTTP/1.0` and a blank line is 18 bytes, and `PUT`,
/// `POST` and `PATCH` share the preface's first letter) is told apart as soon as it differs, and
/// served at once. What is read is kept and handed to the HTTP layer first; the wait is bounded
/// by the head timeout, and a connection that turns out to be HTTP/2 is timed like one
/// negotiated by ALPN.
#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let want = buf.len().min(H2_PREFACE.len());
        let fill = async {
            while self.ahead.len() < want && H2_PREFACE.starts_with(self.ahead.as_slice()) {
                let more = want - self.ahead.len();
                let n = self.inner.read(&mut self.ahead.free()[..more]).await?;
                if n == 0 {
                    // Closed early: the HTTP layer reads what there is, then the end.
                    break;
                }
                self.ahead.filled(n);
            }
            io::Result::Ok(())
        };
        match tokio::time::timeout(self.head_timeout, fill).await {
            Ok(r) => r?,
            Err(_) => {
                self.phase.store(EXPIRED, Ordering::Release);
                self.slot.head_timed_out();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received within server.head_timeout",
                ));
            }
        }
        let have = self.ahead.as_slice();
        buf[..have.len()].copy_from_slice(have);
        buf[have.len()..].fill(0);
        if buf == H2_PREFACE {
            self.h2 = true;
            self.awaiting_request = Some(FirstRequest::new());
        }
        Ok(true)
    }
}

/// A few bytes read ahead of the HTTP layer: at most the h2c preface's length.
#[derive(Debug, Default)]
struct ReadAhead {
    bytes: [u8; H2_PREFACE.len()],
    start: usize,
    end: usize,
}

impl ReadAhead {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Room for more, after what is held (nothing is taken out before the peek is done).
    fn free(&mut self) -> &mut [u8] {
        &mut self.bytes[self.end..]
    }

    fn filled(&mut self, n: usize) {
        self.end += n;
    }

    fn push(&mut self, b: &[u8]) {
        self.free()[..b.len()].copy_from_slice(b);
        self.filled(b.len());
    }

    fn take_into(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.len().min(buf.remaining());
        buf.put_slice(&self.bytes[self.start..self.start + n]);
        self.start += n;
    }
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::transport::Connections;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max: 10,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// An in-memory socket, so that paused time is all the time there is.
    #[derive(Debug)]
    struct Mem(tokio::io::DuplexStream);

    impl AsyncRead for Mem {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Mem {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }

    impl pingora::protocols::l4::virt::VirtualSocket for Mem {
        fn set_socket_option(
            &self,
            _: pingora::protocols::l4::virt::VirtualSockOpt,
        ) -> io::Result<()> {
            Ok(())
        }
    }

    fn guarded(m: &Metrics) -> (GuardedStream, tokio::io::DuplexStream) {
        use pingora::protocols::l4::{stream, virt};
        let c = Connections::new(m.connections("proxy"));
        let (ours, theirs) = tokio::io::duplex(4096);
        let virt = virt::VirtualSocketStream::new(Box::new(Mem(ours)));
        let inner: Stream = Box::new(stream::Stream::from(virt));
        (
            GuardedStream::new(inner, c.admit(10).unwrap(), &limits()),
            theirs,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_a_byte_at_a_time_is_cut_at_the_head_timeout_with_408() {
        let m = Metrics::new();
        let (mut s, mut client) = guarded(&m);
        let start = Instant::now();
        let trickle = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\n" {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        });
        let err = timed_out_read(&mut s).await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        drop(s);
        let answer = trickle.await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 408 "), "{answer:?}");
        assert!(m.encode().contains(
            "usher_connections_refused_total{listener=\"proxy\",reason=\"head_timeout\"} 1"
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_served_has_no_deadline_and_the_idle_clock_starts_after_it() {
        let m = Metrics::new();
        let (s, mut client) = guarded(&m);
        let mut s: Stream = Box::new(s);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        request_started(Some(&s));
        // Serving: a body that takes a minute is not cut here.
        let body = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            client.write_all(b"x").await.unwrap();
            client
        });
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        let mut client = body.await.unwrap();
        request_finished(Some(&s));
        // Idle: 59 s of nothing, then the next request's first byte starts its head clock.
        let start = Instant::now();
        let next = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(59)).await;
            client.write_all(b"G").await.unwrap();
            client
        });
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        let _client = next.await.unwrap();
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(59 + 10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_waited_for_is_handed_on_with_the_rest() {
        let m = Metrics::new();
        let (mut s, mut client) = guarded(&m);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(s.first_byte().await);
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n", "one read, whole head");
        // A client that says nothing within the head timeout gets nothing served.
        let (mut silent, _client) = guarded(&m);
        let start = Instant::now();
        assert!(!silent.first_byte().await);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // Nor one that hangs up.
        let (mut gone, client) = guarded(&m);
        drop(client);
        assert!(!gone.first_byte().await);
    }

    /// Reads `s` until a read fails (the test expects a timeout), handing over what arrives.
    async fn timed_out_read(s: &mut GuardedStream) -> io::Error {
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => panic!("ended instead of timing out"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        }
    }

    /// An h2c connection as Pingora takes it: the first byte waited for, the preface peeked.
    async fn h2c(m: &Metrics, opening: &[u8]) -> (GuardedStream, tokio::io::DuplexStream) {
        let (mut s, mut client) = guarded(m);
        client.write_all(H2_PREFACE).await.unwrap();
        client.write_all(opening).await.unwrap();
        assert!(s.first_byte().await);
        let mut preface = [0u8; 24];
        assert!(s.try_peek(&mut preface).await.unwrap());
        assert!(s.h2);
        (s, client)
    }

    /// SETTINGS (empty), then a HEADERS frame on stream 1.
    const SETTINGS: &[u8] = b"\0\0\0\x04\0\0\0\0\0";
    const HEADERS: &[u8] = b"\0\0\x01\x01\x05\0\0\0\x01\x82";

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_with_a_request_begun_is_not_cut_at_the_head_timeout() {
        let m = Metrics::new();
        let (mut s, mut client) = h2c(&m, &[SETTINGS, HEADERS].concat()).await;
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < H2_PREFACE.len() + SETTINGS.len() + HEADERS.len() {
            got += s.read(&mut buf).await.unwrap();
        }
        // Streams go on for minutes, well past the 10 s head timeout, with the connection
        // waiting on its client in between.
        for _ in 0..12 {
            let next = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                client.write_all(HEADERS).await.unwrap();
                client
            });
            assert_eq!(s.read(&mut buf).await.unwrap(), HEADERS.len());
            client = next.await.unwrap();
        }
        assert!(m.encode().contains(
            "usher_connections_refused_total{listener=\"proxy\",reason=\"head_timeout\"} 0"
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_that_never_begins_a_request_is_cut_at_the_head_timeout() {
        let m = Metrics::new();
        // SETTINGS and a PING, but no HEADERS: nothing to serve.
        let ping = b"\0\0\x08\x06\0\0\0\0\0\x01\x01\x01\x01\x01\x01\x01\x01";
        let (mut s, _client) = h2c(&m, &[SETTINGS, ping].concat()).await;
        let start = Instant::now();
        let err = timed_out_read(&mut s).await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_ends_quietly_at_the_idle_timeout() {
        let m = Metrics::new();
        let (s, _client) = guarded(&m);
        let mut s: Stream = Box::new(s);
        request_started(Some(&s));
        request_finished(Some(&s));
        let start = Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        // Ended for good.
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        request_started(Some(&s));
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        assert!(m
            .encode()
            .contains("usher_connections_idle_closed_total{listener=\"proxy\"} 1"));
    }
}
