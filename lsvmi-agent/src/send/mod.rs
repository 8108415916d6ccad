//! How samples leave the host: batched (batcher.rs), encoded, held in order in an
//! outbox per destination — memory, then the disk spool while no endpoint takes data
//! (outbox.rs, spool.rs) — and POSTed to the first healthy endpoint, or to every one in
//! `replicate` mode, with retries (http.rs, retry.rs).

pub mod auth;
pub mod batcher;
pub mod http;
pub mod outbox;
pub mod ratelimit;
pub mod retry;
pub mod spool;
