//! The `nats` sink: publishes each event to a NATS JetStream subject and waits for the stream's
//! acknowledgement, so an event counts as delivered only once the stream has stored it. The stream
//! is created if it does not exist. Each message carries `Nats-Msg-Id` = the event id, so JetStream
//! itself drops the duplicates that at-least-once delivery can produce (within its duplicate window).

use super::super::model::CloudEvent;
use super::{Deliver, Failure};
use async_nats::jetstream;
use async_trait::async_trait;
use std::time::Duration;

pub struct Nats {
    url: String,
    stream: String,
    subject: String,
    timeout: Duration,
    js: Option<jetstream::Context>,
}

impl Nats {
    pub fn new(url: String, stream: String, subject: String, timeout: Duration) -> Self {
        Nats {
            url,
            stream,
            subject,
            timeout,
            js: None,
        }
    }

    async fn context(&mut self) -> Result<jetstream::Context, String> {
        if let Some(js) = &self.js {
            return Ok(js.clone());
        }
        let client = tokio::time::timeout(
            self.timeout,
            async_nats::ConnectOptions::new()
                .connection_timeout(self.timeout)
                .connect(self.url.as_str()),
        )
        .await
        .map_err(|_| format!("connecting to {}: timed out", self.url))?
        .map_err(|e| format!("connecting to {}: {e}", self.url))?;
        let js = jetstream::new(client);
        tokio::time::timeout(
            self.timeout,
            js.get_or_create_stream(jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: vec![self.subject.clone()],
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| format!("creating stream {}: timed out", self.stream))?
        .map_err(|e| format!("creating stream {}: {e}", self.stream))?;
        self.js = Some(js.clone());
        Ok(js)
    }
}

#[async_trait]
impl Deliver for Nats {
    async fn deliver(&mut self, batch: &[CloudEvent]) -> Result<(), Failure> {
        let js = self.context().await.map_err(Failure::Retry)?;
        let result: Result<(), String> = async {
            let mut acks = Vec::with_capacity(batch.len());
            for e in batch {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", e.id.as_str());
                headers.insert("Ce-Type", e.kind.as_str());
                let payload = serde_json::to_vec(e).map_err(|err| err.to_string())?;
                let ack = js
                    .publish_with_headers(self.subject.clone(), headers, payload.into())
                    .await
                    .map_err(|err| format!("publish: {err}"))?;
                acks.push(ack);
            }
            for ack in acks {
                tokio::time::timeout(self.timeout, ack)
                    .await
                    .map_err(|_| "acknowledgement timed out".to_string())?
                    .map_err(|err| format!("acknowledgement: {err}"))?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            // Start afresh next time: the connection or the stream may be what failed.
            self.js = None;
        }
        result.map_err(Failure::Retry)
    }
}
