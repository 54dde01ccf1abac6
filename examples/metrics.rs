//! evbus's figures in Prometheus's text format: `GET /metrics` on an axum server, with
//! `metrics-exporter-prometheus` as the recorder (any `metrics` exporter works the same way).
//!
//! It builds a bus on `REDIS_URL` (default `redis://127.0.0.1:6379`), listens on a channel
//! and posts to it globally 100 times a second, so every figure moves: posts, batches,
//! messages received back through Redis, and the end-to-end latency histogram.
//!
//! ```sh
//! cargo run --example metrics --features metrics &        # serves 127.0.0.1:9464
//! curl -s localhost:9464/metrics
//! cargo run --example metrics --features metrics -- --once  # prints one scrape and exits
//! ```

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use evbus::{Bus, MessageScope};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Latency buckets, in seconds: from a loopback round trip to a stalled connection. Buckets
/// (unlike the exporter's default summaries) add up across servers in a Prometheus query.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
/// Messages per pipelined write.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("batch_messages".into()), BATCH_BUCKETS)?
        .install_recorder()?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let bus = Bus::builder()
        .redis_url(url)
        .namespace("metrics-example:")
        .build()
        .await?;

    // A listener on the channel, and a poster: every post goes to Redis and comes back.
    bus.messages().add_listener("ticks", |_: &u64| {});
    bus.subscriptions_ready().await?;
    let once = std::env::args().any(|arg| arg == "--once");
    let poster = bus.clone();
    let posting = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for n in 0..if once { 100 } else { u64::MAX } {
            tick.tick().await;
            let posted = poster
                .messages()
                .post_message("ticks", n, MessageScope::Global);
            if posted.is_err() {
                break; // shut down
            }
        }
    });

    if once {
        // 100 posts, all back through Redis (or 10 s), then one scrape.
        posting.await?;
        bus.flush().await?;
        for _ in 0..1000 {
            if bus.stats().global_received >= 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        print!("{}", scrape(State((bus.clone(), metrics))).await);
        bus.shutdown().await?;
        return Ok(());
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "9464".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("scrape http://127.0.0.1:{port}/metrics");
    let routes = Router::new()
        .route("/metrics", get(scrape))
        .with_state((bus.clone(), metrics));
    axum::serve(listener, routes)
        .with_graceful_shutdown(async {
            tokio::signal::ctrl_c().await.expect("listening for Ctrl-C");
        })
        .await?;
    bus.shutdown().await?;
    Ok(())
}

/// One scrape: the bus's `Stats` copied into the recorder, then everything rendered.
async fn scrape(State((bus, metrics)): State<(Bus, PrometheusHandle)>) -> String {
    bus.record_metrics();
    metrics.render()
}
