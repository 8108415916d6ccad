//! How samples leave the host: batched every `batch_interval`, encoded, queued in a
//! bounded queue, and POSTed to the remote-write endpoint with retries.

pub mod batcher;
pub mod http;
pub mod queue;
pub mod retry;
