//! `/proc/net/snmp6`: IPv6, ICMPv6, UDPv6 and UDP-Lite v6 counters.

use std::path::Path;

use super::{
    keyed::{KeyedSource, Mapping},
    text::label,
};
use crate::model::MetricDesc;

metric!(
    COUNTERS,
    "proc_net_snmp6_total",
    Counter,
    "",
    ["protocol", "field"],
    "/proc/net/snmp6",
    "IPv6 protocol counters since boot; `Icmp6InEchos` becomes protocol=Icmp6, field=InEchos."
);

pub static METRICS: &[&MetricDesc] = &[&COUNTERS];

/// `Udp6InDatagrams` → (`Udp6`, `InDatagrams`): split after the first `6`.
fn split_key(key: &[u8]) -> (&[u8], &[u8]) {
    match key.iter().position(|&c| c == b'6') {
        Some(i) => key.split_at(i + 1),
        None => (&key[..0], key),
    }
}

pub fn source(procfs_root: &Path) -> KeyedSource {
    KeyedSource::new("proc_net_snmp6", procfs_root.join("net/snmp6"), |key, _| {
        let (protocol, field) = split_key(key);
        Some(Mapping {
            desc: &COUNTERS,
            labels: vec![("protocol", label(protocol)), ("field", label(field))],
            scale: 1.0,
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_split_after_the_six() {
        assert_eq!(super::split_key(b"UdpLite6InErrors"), (&b"UdpLite6"[..], &b"InErrors"[..]));
        assert_eq!(super::split_key(b"Icmp6OutType133"), (&b"Icmp6"[..], &b"OutType133"[..]));
        assert_eq!(super::split_key(b"odd"), (&b""[..], &b"odd"[..]));
    }
}
