//! The `webhook` sink: HTTP POST of event batches in CloudEvents batched mode
//! (`application/cloudevents-batch+json`, a JSON array). Any 2xx acknowledges the whole batch;
//! anything else, or no answer within the timeout, and the batch is retried from the spool.

use super::super::model::CloudEvent;
use super::Deliver;
use async_trait::async_trait;
use std::time::Duration;

pub const CONTENT_TYPE: &str = "application/cloudevents-batch+json";

pub struct Webhook {
    url: String,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(url: String, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .unwrap_or_default();
        Webhook { url, client }
    }
}

#[async_trait]
impl Deliver for Webhook {
    async fn deliver(&mut self, batch: &[CloudEvent]) -> Result<(), String> {
        let body = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
        let resp = self
            .client
            .post(&self.url)
            .header("content-type", CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST {}: {e}", self.url))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("POST {}: {}", self.url, resp.status()))
        }
    }
}
