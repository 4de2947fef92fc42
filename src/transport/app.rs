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

/// The same refusal for a client that opened with HTTP/2's preface (h2c with prior knowledge),
/// which would read HTTP/1.1's 503 as a malformed frame: the server's preface (an empty SETTINGS
/// frame) and a GOAWAY that processed no stream (last stream id 0), REFUSED_STREAM, so the
/// client knows that nothing it sent was acted on and that it may try again.
const AT_CAPACITY_H2: &[u8] = b"\0\0\0\x04\0\0\0\0\0\
\0\0\x23\x07\0\0\0\0\0\
\0\0\0\0\0\0\0\x07\
too many connections, retry";

/// How long a refused connection is watched for its first bytes, to answer in its protocol. An
/// HTTP/2 client sends its preface as soon as it connects; an idle one gets the 503 after this.
const PROTOCOL_WAIT: Duration = Duration::from_millis(50);

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

/// Tells a connection past the cap why it is closed, in HTTP/2 if it opened with the preface, if it
/// reads within [`LINGER`] and not too many are lingering already; otherwise just closes it.
async fn refuse(mut stream: Stream, connections: &Connections) {
    if !connections.may_linger() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let answer = match tokio::time::timeout(PROTOCOL_WAIT, stream.read(&mut sink)).await {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) if opens_http2(&sink[..n]) => AT_CAPACITY_H2,
            Ok(Ok(_)) | Err(_) => AT_CAPACITY_ANSWER,
            Ok(Err(e)) => return Err(e),
        };
        stream.write_all(answer).await?;
        stream.flush().await?;
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

/// Whether a connection's first bytes are (the start of) HTTP/2's client preface.
fn opens_http2(first: &[u8]) -> bool {
    let n = first.len().min(super::stream::H2_PREFACE.len());
    n >= 4 && first[..n] == super::stream::H2_PREFACE[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_h2_refusal_is_a_settings_frame_and_a_goaway_that_processed_nothing() {
        let (settings, goaway) = AT_CAPACITY_H2.split_at(9);
        assert_eq!(
            settings,
            [0, 0, 0, 4, 0, 0, 0, 0, 0],
            "empty SETTINGS on stream 0"
        );
        let len = u32::from_be_bytes([0, goaway[0], goaway[1], goaway[2]]) as usize;
        assert_eq!(
            len,
            goaway.len() - 9,
            "the GOAWAY's length is its payload's"
        );
        assert_eq!(goaway[3], 7, "GOAWAY");
        assert_eq!(&goaway[5..9], [0, 0, 0, 0], "on stream 0");
        assert_eq!(&goaway[9..13], [0, 0, 0, 0], "no stream was processed");
        assert_eq!(&goaway[13..17], [0, 0, 0, 7], "REFUSED_STREAM");
    }

    #[test]
    fn only_the_preface_reads_as_http2() {
        assert!(opens_http2(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"));
        assert!(opens_http2(b"PRI * HT"));
        assert!(!opens_http2(b"PRI"));
        assert!(!opens_http2(b"GET / HTTP/1.1\r\n"));
        assert!(!opens_http2(b"PRIVATE / HTTP/1.1"));
    }
}
