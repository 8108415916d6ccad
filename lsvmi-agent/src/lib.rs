//! lsvmi: the agent as a library (the binary in `main.rs` is a thin shell around
//! [`agent::run`]). Reading order for a newcomer, following the data:
//!
//! - `sources/` — where each metric is born (one module per source of data);
//! - `model/`   — the one sample model every source emits into;
//! - `sampler`  — the 100 ms loop that polls the sources;
//! - `encode/`  — remote-write protobuf + snappy, or text for `--dry-run`;
//! - `send/`    — batching, the bounded queue, retries, HTTP: how it leaves the host;
//! - `bpf/`     — loading the embedded BPF object (programs live in `lsvmi-ebpf/`);
//! - `trace/`   — deep-tracing sessions on demand or by trigger, hindsight, the control socket;
//! - `systemd`, `privileges`, `check_config` — running as a daemon operators deploy.

pub mod affinity;
pub mod agent;
pub mod bpf;
pub mod catalog;
pub mod check_config;
pub mod cli;
pub mod config;
pub mod encode;
pub mod error_line;
pub mod limits;
pub mod memory;
pub mod model;
pub mod privileges;
pub mod sampler;
pub mod send;
#[macro_use]
pub mod sources;
pub mod stats;
pub mod systemd;
pub mod trace;
