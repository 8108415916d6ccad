//! How samples are encoded: Prometheus remote-write 1.0 (protobuf + snappy block) for
//! the wire, Prometheus text exposition for `--dry-run`.

pub mod proto;
pub mod remote_write;
pub mod text;
