//! The `webhook` sink: HTTP POST of event batches in CloudEvents batched mode
//! (`application/cloudevents-batch+json`, a JSON array). Any 2xx acknowledges the whole batch. No
//! answer within the timeout, a 5xx, a 408 or a 429 and the batch is retried from the spool; any
//! other answer says the receiver will never take it, and it is dead-lettered rather than left to
//! block everything behind it. `https://` works, verified against the system's roots (or the
//! sink's `ca_file`).

use super::super::model::CloudEvent;
use super::{Deliver, Failure};
use async_trait::async_trait;
use std::time::Duration;

pub const CONTENT_TYPE: &str = "application/cloudevents-batch+json";

pub struct Webhook {
    url: String,
    client: reqwest::Client,
}

impl Webhook {
    /// `ca`: PEM certificates to trust besides the system's roots (checked when the configuration
    /// was loaded).
    pub fn new(url: String, timeout: Duration, ca: Option<&[u8]>) -> Self {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout);
        for cert in ca
            .and_then(|pem| reqwest::Certificate::from_pem_bundle(pem).ok())
            .into_iter()
            .flatten()
        {
            b = b.add_root_certificate(cert);
        }
        let client = b.build().unwrap_or_else(|e| {
            tracing::error!(url = %url, "cannot set up the webhook client, using the defaults: {e}");
            reqwest::Client::default()
        });
        Webhook { url, client }
    }
}

#[async_trait]
impl Deliver for Webhook {
    async fn deliver(&mut self, batch: &[CloudEvent]) -> Result<(), Failure> {
        let body = serde_json::to_vec(batch).map_err(|e| Failure::Reject(e.to_string()))?;
        let resp = self
            .client
            .post(&self.url)
            .header("content-type", CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Retry(format!("POST {}: {e}", self.url)))?;
        let status = resp.status();
        let said = || format!("POST {}: {status}", self.url);
        match status.as_u16() {
            200..=299 => Ok(()),
            408 | 429 => Err(Failure::Retry(said())),
            400..=499 => Err(Failure::Reject(said())),
            _ => Err(Failure::Retry(said())),
        }
    }
}
