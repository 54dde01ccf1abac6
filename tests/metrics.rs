//! The `metrics` feature (`cargo test --features metrics --test metrics`): every `Stats`
//! field, and the global path's two histograms, reach a recorder, here Prometheus's, and a
//! scrape shows them with the bus's figures.

mod support;

use std::collections::BTreeMap;

use evbus::{Bus, MessageScope, Stats};
use metrics_exporter_prometheus::PrometheusBuilder;
use support::bus::{build, delivered, flush, ready, recorder, snapshot, wait_until, DEADLINE};
use support::redis::RedisServer;

/// The samples of a Prometheus text scrape: series (name and labels, as written) to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Two buses on one Redis; 200 posts from one reach the other. Each scrape shows every
/// `Stats` field of the bus that recorded last (counters as `_total`, gauges without), the
/// publisher's batch sizes adding up to the posts, and one plausible latency per frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stat_and_both_histograms_reach_a_prometheus_scrape() {
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let server = RedisServer::start();
    let bus = |namespace: &str| {
        Bus::builder()
            .redis_url(server.url())
            .namespace(namespace.to_string())
    };
    let poster = build(bus("metered:")).await;
    let receiver = build(bus("metered:")).await;
    let got = recorder::<u64>(receiver.messages(), "figures");
    ready(&receiver).await;
    for n in 0..200u64 {
        let delivery = poster
            .messages()
            .post_message("figures", n, MessageScope::Global)
            .unwrap();
        if n == 199 {
            delivered(delivery).await;
        }
    }
    flush(&poster).await;
    wait_until("200 messages arrived", DEADLINE, || {
        snapshot(&got).len() == 200
    })
    .await;

    let label = r#"{namespace="metered:"}"#;
    let fields = match serde_json::to_value(Stats::default()).unwrap() {
        serde_json::Value::Object(fields) => fields,
        other => panic!("Stats serializes as a map, not {other}"),
    };
    let gauges = ["channels", "listeners", "streams", "global_buffered"];
    let series = |field: &str| match gauges.contains(&field) {
        true => format!("evbus_{field}{label}"),
        false => format!("evbus_{field}_total{label}"),
    };

    poster.record_metrics();
    let scrape = samples(&prometheus.render());
    for field in fields.keys() {
        assert!(
            scrape.contains_key(&series(field)),
            "{} missing from the scrape: {scrape:#?}",
            series(field)
        );
    }
    let stats = poster.stats();
    assert_eq!(scrape[&series("global_posted")], 200.0);
    assert_eq!(
        scrape[&series("global_batches")],
        stats.global_batches as f64
    );
    // Every post went out in some pipelined write: the batch sizes add up to the posts.
    assert_eq!(
        scrape[&format!("evbus_global_batch_messages_sum{label}")],
        200.0
    );
    assert_eq!(
        scrape[&format!("evbus_global_batch_messages_count{label}")],
        stats.global_batches as f64
    );

    receiver.record_metrics();
    let scrape = samples(&prometheus.render());
    assert_eq!(scrape[&series("global_received")], 200.0);
    assert_eq!(scrape[&series("global_missed")], 0.0);
    assert_eq!(scrape[&series("listeners")], 1.0);
    // One latency per frame received, each between 0 and the whole test's duration.
    let frames = scrape[&format!("evbus_global_latency_seconds_count{label}")];
    assert!(
        (1.0..=200.0).contains(&frames),
        "frames with a latency: {frames}"
    );
    let mean = scrape[&format!("evbus_global_latency_seconds_sum{label}")] / frames;
    assert!(
        (0.0..DEADLINE.as_secs_f64()).contains(&mean),
        "a mean latency of {mean} s: the send time is not read in seconds"
    );
}
