//! The `webhook` sink: HTTP POST of event batches in CloudEvents batched mode
//! (`application/cloudevents-batch+json`, a JSON array), or, with a `template`, of each event as a
//! body of its own (a helpdesk ticket, a CRM case; see `crate::templates`). Any 2xx acknowledges
//! the whole batch. No answer within the timeout, a 5xx, a 408 or a 429 and the batch is retried
//! from the spool; any other answer says the receiver will never take it, and it is dead-lettered
//! rather than left to block everything behind it. A body the template cannot make (it fails, or a
//! JSON body is not JSON) is dead-lettered the same way, without a request: it would never be taken
//! either. `https://` works, verified against the system's roots (or the sink's `ca_file`).
//!
//! A templated webhook is given batches of one event (the configuration sees to it): helpdesk APIs
//! open one ticket per request, and an event acknowledged alone is never sent again because a later
//! one in its batch failed.

use super::super::model::CloudEvent;
use super::{Deliver, Failure};
use crate::config::{Secret, WebhookBody};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

pub const CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// What a webhook's requests look like besides the events in them.
#[derive(Default)]
pub struct Shape {
    pub body: Option<WebhookBody>,
    /// Sent with every request.
    pub headers: Vec<(String, String)>,
    pub authorization: Option<Secret>,
}

pub struct Webhook {
    url: String,
    client: reqwest::Client,
    body: Option<WebhookBody>,
    headers: HeaderMap,
}

impl Webhook {
    /// `ca`: PEM certificates to trust besides the system's roots (checked when the configuration
    /// was loaded, as are the headers).
    pub fn new(url: String, timeout: Duration, ca: Option<&[u8]>, shape: Shape) -> Self {
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
        let mut headers = HeaderMap::new();
        for (k, v) in &shape.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        if let Some(Ok(mut v)) = shape.authorization.map(|a| HeaderValue::from_str(&a.0)) {
            // Kept out of reqwest's and hyper's debug output.
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Webhook {
            url,
            client,
            body: shape.body,
            headers,
        }
    }

    async fn post(
        &self,
        body: Vec<u8>,
        content_type: &str,
        id: Option<(&str, &str)>,
    ) -> Result<(), Failure> {
        let mut req = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header("content-type", content_type);
        if let Some((header, id)) = id {
            req = req.header(header, id);
        }
        let resp = req
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

#[async_trait]
impl Deliver for Webhook {
    async fn deliver(&mut self, batch: &[CloudEvent]) -> Result<(), Failure> {
        let Some(shape) = &self.body else {
            let body = serde_json::to_vec(batch).map_err(|e| Failure::Reject(e.to_string()))?;
            return self.post(body, CONTENT_TYPE, None).await;
        };
        for e in batch {
            let body = shape
                .template
                .render(e)
                .map_err(|err| Failure::Reject(format!("event {}: {err}", e.id)))?;
            let id = shape
                .idempotency_header
                .as_deref()
                .map(|h| (h, e.id.as_str()));
            self.post(body.into_bytes(), &shape.content_type, id)
                .await?;
        }
        Ok(())
    }
}
