//! `/metrics` in the Prometheus text format, read from the ledger at scrape time, so every
//! daemon sharing a database reports the same totals: deliveries by state, channel and
//! backend; the send latency histogram (every attempt); the queue depth and the age of the
//! oldest due delivery; webhook endpoints disabled; the processes sending, which one leads, how
//! fast each sends, and the windows paused.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::problem::Answer;

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub async fn metrics(State(state): State<AppState>) -> Answer<Response> {
    let m = state.store.metrics(state.clock.now()).await?;
    let daemons = state.store.daemons().await?;
    let paused = state.store.paused_windows().await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP tangazo_daemon_sending_rate Deliveries per second each process alive recorded sent lately; leader=\"true\" plans."
    );
    let _ = writeln!(out, "# TYPE tangazo_daemon_sending_rate gauge");
    for d in &daemons {
        let _ = writeln!(
            out,
            "tangazo_daemon_sending_rate{{daemon=\"{}\",leader=\"{}\"}} {}",
            label(&d.name),
            d.leader,
            d.rate
        );
    }
    let _ = writeln!(
        out,
        "# HELP tangazo_daemons Processes alive that send (each takes an even part of every backend's rate)."
    );
    let _ = writeln!(out, "# TYPE tangazo_daemons gauge");
    let _ = writeln!(out, "tangazo_daemons {}", daemons.len());
    let _ = writeln!(
        out,
        "# HELP tangazo_windows_paused Windows whose deliveries no daemon claims until resumed."
    );
    let _ = writeln!(out, "# TYPE tangazo_windows_paused gauge");
    let _ = writeln!(out, "tangazo_windows_paused {}", paused.len());
    let _ = writeln!(
        out,
        "# HELP tangazo_deliveries Deliveries in the ledger by state, channel and backend."
    );
    let _ = writeln!(out, "# TYPE tangazo_deliveries gauge");
    for (s, channel, backend, count) in &m.deliveries {
        let _ = writeln!(
            out,
            "tangazo_deliveries{{state=\"{}\",channel=\"{}\",backend=\"{}\"}} {count}",
            label(s),
            label(channel),
            label(backend)
        );
    }
    let _ = writeln!(
        out,
        "# HELP tangazo_queue_due Pending deliveries whose time has come, but for those of paused windows."
    );
    let _ = writeln!(out, "# TYPE tangazo_queue_due gauge");
    let _ = writeln!(out, "tangazo_queue_due {}", m.due);
    let _ = writeln!(
        out,
        "# HELP tangazo_queue_oldest_due_age_seconds How long the oldest due delivery has waited."
    );
    let _ = writeln!(out, "# TYPE tangazo_queue_oldest_due_age_seconds gauge");
    let _ = writeln!(out, "tangazo_queue_oldest_due_age_seconds {}", m.oldest_due_age);
    let _ = writeln!(
        out,
        "# HELP tangazo_webhook_endpoints_disabled Webhook endpoints disabled (410, or failing for days)."
    );
    let _ = writeln!(out, "# TYPE tangazo_webhook_endpoints_disabled gauge");
    let _ = writeln!(out, "tangazo_webhook_endpoints_disabled {}", m.endpoints_disabled);
    let _ = writeln!(
        out,
        "# HELP tangazo_send_latency_seconds Time each attempt to hand a delivery to a backend took."
    );
    let _ = writeln!(out, "# TYPE tangazo_send_latency_seconds histogram");
    for (bound, count) in &m.latency_buckets {
        let _ = writeln!(
            out,
            "tangazo_send_latency_seconds_bucket{{le=\"{}\"}} {count}",
            *bound as f64 / 1000.0
        );
    }
    let _ = writeln!(
        out,
        "tangazo_send_latency_seconds_bucket{{le=\"+Inf\"}} {}",
        m.latency_count
    );
    let _ = writeln!(
        out,
        "tangazo_send_latency_seconds_sum {}",
        m.latency_sum_ms as f64 / 1000.0
    );
    let _ = writeln!(out, "tangazo_send_latency_seconds_count {}", m.latency_count);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response())
}
