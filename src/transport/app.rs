//! A Pingora `ServerApp` that admits each new connection under its listener's cap and hands it on
//! as a [`GuardedStream`]; the application it wraps (usher's proxy, the admin API) sees nothing else.
//!
//! On TLS listeners the handshake is done here, after admission, rather than by Pingora's
//! listener: so a flood of connections past the cap costs no handshake, a handshake must be done
//! within `server.head_timeout` (Pingora's own limit is 60 s), and every handshake is counted by
//! its result (`usher_tls_handshakes_total`). The handshake itself is Pingora's rustls acceptor.

use super::limit::Connections;
use super::stream::GuardedStream;
use crate::settings::ConnectionLimits;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Ssl;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The answer to a connection past the cap. `retry-after` because the cap is momentary: a slot
/// comes free as soon as any connection closes.
const AT_CAPACITY_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 28\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections, retry\n";

/// How long a refused connection may take to receive its answer and finish sending its request
/// (closing on unread input would reset the connection and lose the answer).
const LINGER: Duration = Duration::from_millis(500);

/// What a listener's limits are now: read per connection, so that a reload applies to the next one.
pub type LimitsNow = Arc<dyn Fn() -> ConnectionLimits + Send + Sync>;

pub struct Guarded<A> {
    inner: Arc<A>,
    connections: Arc<Connections>,
    limits: LimitsNow,
    tls: Option<Acceptor>,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, connections: Arc<Connections>, limits: LimitsNow) -> Self {
        Guarded {
            inner: Arc::new(inner),
            connections,
            limits,
            tls: None,
        }
    }

    /// As [`Guarded::new`], for listeners that speak TLS: each admitted connection's handshake
    /// is done by `tls` first.
    pub fn with_tls(
        inner: A,
        connections: Arc<Connections>,
        limits: LimitsNow,
        tls: Acceptor,
    ) -> Self {
        Guarded {
            tls: Some(tls),
            ..Guarded::new(inner, connections, limits)
        }
    }
}

/// Indexes of [`crate::metrics::PROTOCOLS`] and [`crate::metrics::TLS_RESULTS`].
const HTTP: usize = 0;
const HTTPS: usize = 1;
const H2: usize = 2;
const TLS12: usize = 0;
const TLS13: usize = 1;
const TLS_TIMEOUT: usize = 2;
const TLS_CLOSED: usize = 3;
const TLS_REFUSED: usize = 4;
const TLS_MALFORMED: usize = 5;
const TLS_OTHER: usize = 6;

/// Why a handshake failed, from rustls's error as Pingora words it.
fn tls_failure(e: &pingora::Error) -> usize {
    let text = e.to_string().to_ascii_lowercase();
    if ["eof", "reset", "broken pipe", "closed"]
        .iter()
        .any(|w| text.contains(w))
    {
        TLS_CLOSED
    } else if [
        "alert",
        "certificate",
        "incompatible",
        "nociphersuites",
        "no cipher",
        "noapplicationprotocol",
        "protocol version",
    ]
    .iter()
    .any(|w| text.contains(w))
    {
        TLS_REFUSED
    } else if ["corrupt", "invalid", "decode"]
        .iter()
        .any(|w| text.contains(w))
    {
        TLS_MALFORMED
    } else {
        TLS_OTHER
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A stream the application handed back for reuse is guarded already.
        if stream.as_any().is::<GuardedStream>() {
            return self.inner.process_new(stream, shutdown).await;
        }
        let limits = (self.limits)();
        let accepted = tokio::time::Instant::now();
        match self.connections.admit(limits.max) {
            Some(mut slot) => {
                let stream: Stream = match &self.tls {
                    None => {
                        slot.set_protocol(HTTP);
                        stream
                    }
                    Some(acceptor) => {
                        // What a TCP listener accepts: the handshake needs the concrete stream.
                        let Ok(tcp) = stream.into_any().downcast::<L4Stream>() else {
                            tracing::error!("a TLS listener got something other than a TCP stream");
                            return None;
                        };
                        let handshake = acceptor.tls_handshake(*tcp);
                        match tokio::time::timeout(limits.head_timeout, handshake).await {
                            Ok(Ok(tls)) => {
                                let v13 = tls.get_ssl_digest().is_some_and(|d| {
                                    d.version.contains("1.3") || d.version.contains("1_3")
                                });
                                slot.tls_handshake(if v13 { TLS13 } else { TLS12 });
                                let h2 = matches!(
                                    tls.selected_alpn_proto(),
                                    Some(pingora::protocols::ALPN::H2)
                                );
                                slot.set_protocol(if h2 { H2 } else { HTTPS });
                                Box::new(tls)
                            }
                            Ok(Err(e)) => {
                                slot.tls_handshake(tls_failure(&e));
                                return None;
                            }
                            Err(_) => {
                                slot.tls_handshake(TLS_TIMEOUT);
                                return None;
                            }
                        }
                    }
                };
                // The handshake and the first head share one head timeout.
                let mut guarded = GuardedStream::after(stream, slot, &limits, accepted.elapsed());
                if !guarded.first_byte().await {
                    return None;
                }
                self.inner.process_new(Box::new(guarded), shutdown).await
            }
            None => {
                // A TLS client would read the plain 503 as a broken handshake: it is just closed.
                if self.tls.is_none() {
                    refuse(stream, &self.connections).await;
                }
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Tells a connection past the cap why it is closed, if it reads within [`LINGER`] and not too many
/// are lingering already; otherwise just closes it.
async fn refuse(mut stream: Stream, connections: &Connections) {
    if !connections.may_linger() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        stream.write_all(AT_CAPACITY_ANSWER).await?;
        stream.flush().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        std::io::Result::Ok(())
    })
    .await;
    connections.lingered();
}
