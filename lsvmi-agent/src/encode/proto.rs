//! Prometheus remote-write 1.0 messages (prometheus/prompb `remote.proto`/`types.proto`),
//! as prost types. The agent's hot path writes the same bytes by hand
//! (`remote_write.rs`); these types are the reference it is tested against, and what
//! tests use to decode requests.

/// `WriteRequest { repeated TimeSeries timeseries = 1; reserved 2; reserved 3; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `TimeSeries { repeated Label labels = 1; repeated Sample samples = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `Label { string name = 1; string value = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `Sample { double value = 1; int64 timestamp = 2; }` (timestamp in ms)
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}
