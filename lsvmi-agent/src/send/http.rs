//! The remote-write HTTP client and the send loop.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use bytes::Bytes;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{
    queue::SendQueue,
    retry::{Backoff, Verdict, classify},
};
use crate::stats::{DropReason, Stats};

/// Error bodies are logged verbatim up to this many bytes.
const MAX_LOGGED_BODY: usize = 256;

pub struct HttpSender {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl HttpSender {
    pub fn new(url: reqwest::Url, timeout: Duration) -> anyhow::Result<Self> {
        // The protocol's headers; set here once, they cannot be overridden per request.
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
        headers.insert("X-Prometheus-Remote-Write-Version", HeaderValue::from_static("0.1.0"));
        headers.insert(USER_AGENT, HeaderValue::from_static(concat!("lsvmi/", env!("CARGO_PKG_VERSION"))));
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        Ok(HttpSender { client, url })
    }

    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// One POST of one batch.
    pub async fn post(&self, body: Bytes) -> Verdict {
        match self.client.post(self.url.clone()).body(body).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    return Verdict::Delivered;
                }
                let text = resp.text().await.unwrap_or_default();
                classify(status, truncate(text.trim(), MAX_LOGGED_BODY))
            }
            Err(e) => Verdict::Retry(crate::bpf::describe(&e)),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Send queued batches in order until the queue is closed and empty, or `abort` turns
/// true (the shutdown deadline). A failing batch is retried before any later one, so
/// per-series order holds.
pub async fn run(sender: HttpSender, queue: Arc<SendQueue>, stats: Arc<Stats>, mut abort: watch::Receiver<bool>) {
    let mut failing_since: Option<u32> = None;
    while let Some(batch) = queue.pop().await {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            let verdict = tokio::select! {
                v = sender.post(batch.body.clone()) => v,
                _ = abort.wait_for(|a| *a) => {
                    give_up(&queue, &stats, batch.samples);
                    return;
                }
            };
            match verdict {
                Verdict::Delivered => {
                    stats.batches_sent.fetch_add(1, Relaxed);
                    stats.samples_sent.fetch_add(batch.samples as u64, Relaxed);
                    stats.bytes_compressed.fetch_add(batch.body.len() as u64, Relaxed);
                    stats.bytes_uncompressed.fetch_add(batch.uncompressed_len as u64, Relaxed);
                    if let Some(failures) = failing_since.take() {
                        info!(url = %sender.url(), failures, "remote write delivering again");
                    }
                    break;
                }
                Verdict::Reject(why) => {
                    stats.dropped(DropReason::Rejected, batch.samples as u64);
                    error!(url = %sender.url(), samples = batch.samples, "remote write rejected the batch, dropped it (not retried): {why}");
                    break;
                }
                Verdict::Retry(why) => {
                    stats.send_failures.fetch_add(1, Relaxed);
                    *failing_since.get_or_insert(0) += 1;
                    let delay = backoff.next_delay();
                    let (queued_batches, queued_bytes) = queue.len();
                    warn!(
                        url = %sender.url(),
                        attempt = backoff.attempts,
                        retry_in_ms = delay.as_millis() as u64,
                        queued_batches,
                        queued_bytes,
                        "remote write failed: {why}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = abort.wait_for(|a| *a) => {
                            give_up(&queue, &stats, batch.samples);
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Shutdown deadline passed: count what is still undelivered.
fn give_up(queue: &SendQueue, stats: &Stats, in_flight_samples: usize) {
    let (batches, samples) = queue.drain();
    let samples = samples + in_flight_samples;
    stats.dropped(DropReason::Shutdown, samples as u64);
    warn!(batches = batches + 1, samples, "shutdown deadline passed: undelivered samples dropped");
}
