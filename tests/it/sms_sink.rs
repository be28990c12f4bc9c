//! A local SMS gateway that speaks Africa's Talking's bulk API and notes when each number
//! arrived. It can be made slow: each request is then held, one at a time, so a run of `n`
//! requests lasts at least `n` times the hold however fast the sender is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

/// Every number the sink was sent, with when its request arrived.
#[derive(Default)]
pub struct Sink {
    pub arrivals: Mutex<Vec<(Instant, String)>>,
    hold: Duration,
    turn: tokio::sync::Mutex<()>,
}

impl Sink {
    /// How many times each number arrived.
    pub fn per_number(&self) -> HashMap<String, u32> {
        let mut per_number = HashMap::new();
        for (_, n) in self.arrivals.lock().unwrap().iter() {
            *per_number.entry(n.clone()).or_default() += 1;
        }
        per_number
    }
}

async fn messaging(State(sink): State<Arc<Sink>>, Form(form): Form<HashMap<String, String>>) -> impl IntoResponse {
    if !sink.hold.is_zero() {
        let _turn = sink.turn.lock().await;
        tokio::time::sleep(sink.hold).await;
    }
    let now = Instant::now();
    let numbers: Vec<String> = form["to"].split(',').map(str::to_owned).collect();
    let recipients: Vec<serde_json::Value> = numbers
        .iter()
        .map(|n| serde_json::json!({"statusCode": 101, "number": n, "status": "Success", "cost": "KES 0.8000", "messageId": format!("ATXid_{n}")}))
        .collect();
    sink.arrivals
        .lock()
        .unwrap()
        .extend(numbers.into_iter().map(|n| (now, n)));
    let body = serde_json::json!({"SMSMessageData": {"Message": "Sent", "Recipients": recipients}});
    (StatusCode::CREATED, axum::Json(body))
}

/// A sink on a loopback port that holds each request `hold` (none if zero), and its base URL.
pub async fn start(hold: Duration) -> (Arc<Sink>, String) {
    let sink = Arc::new(Sink {
        hold,
        ..Sink::default()
    });
    let app = axum::Router::new()
        .route("/version1/messaging", axum::routing::post(messaging))
        .with_state(Arc::clone(&sink));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (sink, base)
}

/// The configuration of an Africa's Talking sender named `at` that sends through the sink at
/// `base` and carries all SMS.
pub fn sender(base: &str) -> String {
    format!(
        "[senders.at]\ntype = \"africastalking\"\nbase_url = \"{base}\"\nusername = \"sandbox\"\napi_key = \"key-1\"\n\
         [channels]\nsms = [\"at\"]\nemail = [\"outbox\"]\nwebhook = [\"outbox\"]\n"
    )
}
