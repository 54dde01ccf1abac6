//! What the bus hands to a `metrics` recorder (the `metrics` feature); without the feature
//! every function here is an empty inline one, so callers carry no `cfg`.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `evbus_<field>_total` | counter | each counter of [`Stats`](crate::Stats#fields), by its field name |
//! | `evbus_<field>` | gauge | each gauge of [`Stats`](crate::Stats#fields) (`channels`, `listeners`, `streams`, `global_buffered`) |
//! | `evbus_global_batch_messages` | histogram | messages per pipelined write to Redis |
//! | `evbus_global_latency_seconds` | histogram | end-to-end latency of a received frame |
//!
//! Every metric has the label `namespace` when the bus has one
//! ([`BusBuilder::namespace`](crate::BusBuilder::namespace)), so that buses of one process
//! stay apart.
//!
//! The counters and gauges are copied from [`Stats`](crate::Stats#fields) when
//! `Bus::record_metrics` is called (before each scrape, or on
//! a timer), not counted where they happen: the local post path stays as it is, with no
//! call into a recorder. The histograms are recorded where they happen, on the global path
//! only: the publisher records one sample per pipelined write, a receiver one per Native
//! frame. The latency is the receiver's clock at decoding minus the origin's clock when it
//! wrote the frame (the frame's `sent_at`). Between machines it is only as good as their
//! clocks agree: with NTP, within a millisecond or a few; a receiver whose clock is behind
//! the origin's records 0, never a negative figure. A Serverpod frame has no send time and
//! records none.

#[cfg(feature = "metrics")]
use crate::stats::Stats;

/// The `Stats` fields that are gauges (*(now)* in their docs); the rest are counters.
#[cfg(feature = "metrics")]
const GAUGES: &[&str] = &["channels", "listeners", "streams", "global_buffered"];

/// The histogram of messages per pipelined write.
#[cfg(feature = "metrics")]
const BATCH: &str = "evbus_global_batch_messages";
/// The histogram of end-to-end latency, in seconds.
#[cfg(feature = "metrics")]
const LATENCY: &str = "evbus_global_latency_seconds";

#[cfg(feature = "metrics")]
fn labels(namespace: &str) -> Vec<metrics::Label> {
    if namespace.is_empty() {
        Vec::new()
    } else {
        vec![metrics::Label::new("namespace", namespace.to_string())]
    }
}

/// Sets every counter and gauge of `stats`. The fields come from `Stats`'s own `Serialize`,
/// so a field added to `Stats` is exported without a change here.
#[cfg(feature = "metrics")]
pub(crate) fn record(stats: &Stats, namespace: &str) {
    describe();
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(stats) else {
        return;
    };
    for (field, value) in fields {
        let Some(value) = value.as_u64() else {
            continue;
        };
        if GAUGES.contains(&field.as_str()) {
            metrics::gauge!(format!("evbus_{field}"), labels(namespace)).set(value as f64);
        } else {
            metrics::counter!(format!("evbus_{field}_total"), labels(namespace)).absolute(value);
        }
    }
}

/// Describes the metrics to the recorder once per process (Prometheus's `# HELP` lines).
#[cfg(feature = "metrics")]
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(Stats::default()) {
            for field in fields.keys() {
                let help = format!("evbus Stats::{field} (see the evbus docs of Stats)");
                if GAUGES.contains(&field.as_str()) {
                    metrics::describe_gauge!(format!("evbus_{field}"), help);
                } else {
                    metrics::describe_counter!(format!("evbus_{field}_total"), help);
                }
            }
        }
        metrics::describe_histogram!(
            BATCH,
            metrics::Unit::Count,
            "messages per pipelined write to Redis"
        );
        metrics::describe_histogram!(
            LATENCY,
            metrics::Unit::Seconds,
            "end-to-end latency of a received frame: receiver's clock minus the origin's at sending"
        );
    });
}

/// One pipelined write of `messages` messages.
#[inline]
pub(crate) fn batch(namespace: &str, messages: usize) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(BATCH, labels(namespace)).record(messages as f64);
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, messages);
}

/// A Native frame the origin wrote at `sent_at` (microseconds since the Unix epoch, 0 when
/// unknown), decoded now.
#[inline]
pub(crate) fn latency(namespace: &str, sent_at: u64) {
    #[cfg(feature = "metrics")]
    if sent_at != 0 {
        let now = crate::wire::frame::now_micros();
        let micros = now.saturating_sub(sent_at);
        metrics::histogram!(LATENCY, labels(namespace)).record(micros as f64 / 1e6);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, sent_at);
}
