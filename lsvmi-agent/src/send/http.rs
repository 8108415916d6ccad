//! The remote-write HTTP client and the send loop.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use super::{
    outbox::Outbox,
    retry::{Backoff, Verdict, classify},
};
use crate::stats::{DropReason, EndpointStats, Stats};

/// How often endpoints in back-off are health-checked.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// Error bodies are logged verbatim up to this many bytes.
const MAX_LOGGED_BODY: usize = 256;

/// What every sender shares: timeouts, TLS, credentials, headers, the egress limit.
#[derive(Clone)]
pub struct ClientSettings {
    pub timeout: Duration,
    pub tls: super::auth::Tls,
    pub headers: Vec<(reqwest::header::HeaderName, HeaderValue)>,
    pub auth: super::auth::AuthHeader,
    pub limit: Option<Arc<super::ratelimit::RateLimit>>,
}

pub struct HttpSender {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: super::auth::AuthHeader,
    limit: Option<Arc<super::ratelimit::RateLimit>>,
    /// `<scheme>://<host>:<port>/health`: VictoriaMetrics, vminsert and vmagent all serve it.
    health: reqwest::Url,
}

impl HttpSender {
    pub fn new(url: reqwest::Url, settings: &ClientSettings) -> anyhow::Result<Self> {
        // User headers first: the protocol's, inserted after, win (config already refuses
        // reserved names; this keeps it so whatever the config code does).
        let mut headers = HeaderMap::new();
        for (n, v) in &settings.headers {
            headers.insert(n.clone(), v.clone());
        }
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
        headers.insert("X-Prometheus-Remote-Write-Version", HeaderValue::from_static("0.1.0"));
        headers.insert(USER_AGENT, HeaderValue::from_static(concat!("lsvmi/", env!("CARGO_PKG_VERSION"))));
        let timeout = settings.timeout;
        let builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)));
        let client = settings
            .tls
            .apply(builder)
            .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        let mut health = url.clone();
        health.set_path("/health");
        health.set_query(None);
        Ok(HttpSender { client, url, health, auth: settings.auth.clone(), limit: settings.limit.clone() })
    }

    /// Start this endpoint's health checker: a task of its own, so that checks of
    /// endpoints that do not answer (2 s each) never stand in the way of delivery to
    /// another. It sleeps until [`HealthCheck::start`], then checks every
    /// HEALTH_EVERY until the endpoint answers, sets its flag and wakes `wake`.
    fn health_check(&self, wake: Arc<Notify>) -> HealthCheck {
        let (client, url, auth) = (self.client.clone(), self.health.clone(), self.auth.clone());
        let wanted = Arc::new(Notify::new());
        let answered = Arc::new(AtomicBool::new(false));
        let task = {
            let (wanted, answered) = (wanted.clone(), answered.clone());
            tokio::spawn(async move {
                loop {
                    wanted.notified().await;
                    loop {
                        tokio::time::sleep(HEALTH_EVERY).await;
                        if probe(&client, &url, &auth).await {
                            break;
                        }
                    }
                    answered.store(true, Relaxed);
                    wake.notify_one();
                }
            })
        };
        HealthCheck { wanted, answered, task }
    }

    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// One POST of one batch.
    pub async fn post(&self, body: Bytes) -> Verdict {
        if let Some(limit) = &self.limit {
            let wait = limit.reserve(body.len());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let mut req = self.client.post(self.url.clone()).body(body);
        if let Some(auth) = self.auth.get() {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    return Verdict::Delivered;
                }
                let text = resp.text().await.unwrap_or_default();
                classify(status, truncate(text.trim(), MAX_LOGGED_BODY))
            }
            Err(e) => Verdict::Unreachable(describe(&e)),
        }
    }
}

/// One line for a failed request. EPERM/EACCES on a socket is this host refusing the
/// connection (a firewall rule, a security policy), not a missing capability.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut denied = false;
    for e in crate::error_line::causes(err) {
        crate::error_line::push_first_line(&mut parts, &e.to_string());
        denied |= crate::error_line::is_denied(e);
    }
    let mut line = parts.join(": ");
    if denied {
        line.push_str(" (this host refused the connection: a firewall rule or security policy)");
    }
    line
}

/// Is the endpoint answering at all? Any HTTP status below 500 counts (a sink without
/// `/health` answers 404, which still proves it is up).
async fn probe(client: &reqwest::Client, url: &reqwest::Url, auth: &super::auth::AuthHeader) -> bool {
    let mut req = client.get(url.clone()).timeout(Duration::from_secs(2));
    if let Some(auth) = auth.get() {
        req = req.header(reqwest::header::AUTHORIZATION, auth);
    }
    matches!(req.send().await, Ok(r) if r.status().as_u16() < 500)
}

/// One endpoint's health-check task; it ends with the send loop that owns it.
struct HealthCheck {
    wanted: Arc<Notify>,
    answered: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthCheck {
    /// Check until the endpoint answers (first check after HEALTH_EVERY, as a failure
    /// was just seen).
    fn start(&self) {
        self.answered.store(false, Relaxed);
        self.wanted.notify_one();
    }

    /// Whether it answered since [`start`](Self::start); reading clears it.
    fn take_answered(&self) -> bool {
        self.answered.swap(false, Relaxed)
    }
}

impl Drop for HealthCheck {
    fn drop(&mut self) {
        self.task.abort();
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

/// One endpoint's health as the sender sees it.
struct Health {
    healthy: bool,
    /// When an unhealthy endpoint may be tried again with data.
    retry_at: Instant,
    backoff: Backoff,
    failures: u32,
    /// It stopped answering at all: its health check runs (every HEALTH_EVERY), and it
    /// is used as soon as that answers. (A sink that answers 5xx waits out its back-off.)
    unreachable: bool,
}

impl Health {
    fn new(now: Instant) -> Self {
        Health { healthy: true, retry_at: now, backoff: new_backoff(), failures: 0, unreachable: false }
    }
}

fn new_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(30))
}

/// Send the outbox's batches in order, to the first healthy endpoint (failover), until
/// the outbox is closed and empty or `abort` turns true (the shutdown deadline). A batch
/// is removed from the outbox only once delivered (or rejected), so a failing batch is
/// retried — on the next endpoint at once, or after a back-off when none is left — before
/// any later one, and per-series order holds. While no endpoint takes data, the outbox
/// spools. With one endpoint this is a plain retry loop (each replica in `replicate`
/// mode runs one of these).
pub async fn run(
    senders: Vec<HttpSender>,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    endpoint_stats: Vec<Arc<EndpointStats>>,
    mut abort: watch::Receiver<bool>,
) {
    let now = Instant::now();
    let mut health: Vec<Health> = senders.iter().map(|_| Health::new(now)).collect();
    let answered = Arc::new(Notify::new());
    let checks: Vec<HealthCheck> = senders.iter().map(|s| s.health_check(answered.clone())).collect();
    loop {
        let batch = tokio::select! {
            b = outbox.next() => match b { Some(b) => b, None => return },
            _ = abort.wait_for(|a| *a) => return,
        };
        loop {
            // Endpoints that stopped answering are checked by their own tasks, also while
            // another endpoint takes the data, so failover returns to the first.
            for ((h, check), sender) in health.iter_mut().zip(&checks).zip(&senders) {
                if h.unreachable && check.take_answered() {
                    info!(url = %sender.url(), "endpoint answers its health check again");
                    h.unreachable = false;
                    h.retry_at = Instant::now();
                }
            }
            let now = Instant::now();
            // In the order given: the first that is healthy or whose back-off has passed.
            let pick = health.iter().position(|h| h.healthy || h.retry_at <= now);
            let Some(i) = pick else {
                let wake = health.iter().map(|h| h.retry_at).min().unwrap_or(now);
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => {}
                    _ = answered.notified() => {}
                    _ = abort.wait_for(|a| *a) => return,
                }
                continue;
            };
            let sender = &senders[i];
            let started = Instant::now();
            let verdict = tokio::select! {
                v = sender.post(batch.body.clone()) => v,
                _ = abort.wait_for(|a| *a) => return,
            };
            stats.send_latency.record(started.elapsed());
            let h = &mut health[i];
            match verdict {
                Verdict::Delivered => {
                    stats.batches_sent.fetch_add(1, Relaxed);
                    stats.samples_sent.fetch_add(batch.samples as u64, Relaxed);
                    stats.bytes_compressed.fetch_add(batch.body.len() as u64, Relaxed);
                    stats.bytes_uncompressed.fetch_add(batch.uncompressed_len as u64, Relaxed);
                    if !h.healthy {
                        info!(url = %sender.url(), failures = h.failures, "remote write delivering again");
                    }
                    *h = Health::new(now);
                    endpoint_stats[i].up.store(1, Relaxed);
                    if outbox.on_disk() {
                        let (ob, done) = (outbox.clone(), batch.clone());
                        let _ = tokio::task::spawn_blocking(move || {
                            ob.ack(&done);
                            ob.set_failing(false);
                        })
                        .await;
                    } else {
                        outbox.ack(&batch);
                    }
                    break;
                }
                Verdict::Reject(why) => {
                    stats.dropped(DropReason::Rejected, batch.samples as u64);
                    error!(url = %sender.url(), samples = batch.samples, "remote write rejected the batch, dropped it (not retried): {why}");
                    let ob = outbox.clone();
                    let done = batch.clone();
                    let _ = tokio::task::spawn_blocking(move || ob.ack(&done)).await;
                    break;
                }
                Verdict::Retry(ref why) | Verdict::Unreachable(ref why) => {
                    let unreachable = matches!(verdict, Verdict::Unreachable(_));
                    if unreachable && !h.unreachable {
                        checks[i].start();
                    }
                    h.unreachable = unreachable;
                    stats.send_failures.fetch_add(1, Relaxed);
                    endpoint_stats[i].failures.fetch_add(1, Relaxed);
                    endpoint_stats[i].up.store(0, Relaxed);
                    h.healthy = false;
                    h.failures += 1;
                    let delay = h.backoff.next_delay();
                    h.retry_at = now + delay;
                    let others = health.iter().any(|o| o.healthy);
                    let (queued_batches, queued_bytes, spooled_samples) = outbox.len();
                    warn!(
                        url = %sender.url(),
                        attempt = health[i].failures,
                        retry_in_ms = delay.as_millis() as u64,
                        failover = others,
                        queued_batches,
                        queued_bytes,
                        spooled_samples,
                        "remote write failed: {why}"
                    );
                    if !others {
                        let ob = outbox.clone();
                        let _ = tokio::task::spawn_blocking(move || ob.set_failing(true)).await;
                    }
                }
            }
        }
    }
}

/// Shutdown deadline passed: keep what is undelivered in the spool, or count it lost.
pub async fn park(outbox: Arc<Outbox>, stats: &Stats) {
    let left = tokio::task::spawn_blocking(move || outbox.park()).await.unwrap_or(0);
    if left > 0 {
        stats.dropped(DropReason::Shutdown, left);
        warn!(samples = left, "shutdown deadline passed and no spool: undelivered samples dropped");
    }
}
