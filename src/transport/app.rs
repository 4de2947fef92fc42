//! A Pingora `ServerApp` that admits each new connection under its listener's cap and hands it on
//! as a [`GuardedStream`]; the application it wraps (usher's proxy, the admin API) sees nothing else.

use super::limit::Connections;
use super::stream::GuardedStream;
use crate::settings::ConnectionLimits;
use async_trait::async_trait;
use pingora::apps::ServerApp;
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
}

impl<A> Guarded<A> {
    pub fn new(inner: A, connections: Arc<Connections>, limits: LimitsNow) -> Self {
        Guarded {
            inner: Arc::new(inner),
            connections,
            limits,
        }
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
        match self.connections.admit(limits.max) {
            Some(slot) => {
                let mut guarded = GuardedStream::new(stream, slot, &limits);
                if !guarded.first_byte().await {
                    return None;
                }
                self.inner.process_new(Box::new(guarded), shutdown).await
            }
            None => {
                refuse(stream, &self.connections).await;
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
