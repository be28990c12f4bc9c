//! The SMS gateway backends against local servers that speak the providers' documented request
//! and response shapes: Twilio's Messages API and Africa's Talking's bulk messaging API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tangazo::channels::registry::{Backend, BuildContext};
use tangazo::channels::{Address, Message, Receipt, SendError, Sender};
use tangazo::domain::{Channel, Encoding, Locale, PhoneNumber, Rendered};

/// Serves `app` on a loopback port; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn sms(number: &str, body: &str) -> Message {
    Message {
        idempotency_key: format!("w1.r1.announced.{number}.sms"),
        channel: Channel::Sms,
        to: Address::Phone(PhoneNumber::parse(number).unwrap()),
        kind: "announced".into(),
        notice: "announced".into(),
        window_id: Some(1),
        broadcast: None,
        revision: 1,
        locale: Locale::En,
        attempt: 1,
        possibly_duplicate: false,
        not_after: Some(tokio::time::Instant::now() + Duration::from_secs(3600)),
        unsubscribe: None,
        content: Arc::new(Rendered::Sms {
            body: body.into(),
            encoding: Encoding::Gsm7,
            segments: 1,
        }),
    }
}

pub fn build<B: Backend>(config: &B) -> Arc<dyn Sender> {
    config
        .build("gw", &BuildContext::with_console(std::io::sink()))
        .unwrap()
}

// ---------------------------------------------------------------- Twilio

#[derive(Default)]
pub struct Twilio {
    pub requests: Mutex<Vec<HashMap<String, String>>>,
}

/// Twilio's Messages API as documented: the `To` number's last two digits pick the answer.
async fn twilio(
    State(state): State<Arc<Twilio>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // Basic auth with the account SID and the auth token ("AC123:secret").
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if sid != "AC123" || auth != "Basic QUMxMjM6c2VjcmV0" {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"code": 20003, "message": "Authenticate"}"#,
        )
            .into_response();
    }
    state.requests.lock().unwrap().push(form.clone());
    let to = form.get("To").cloned().unwrap_or_default();
    match &to[to.len() - 2..] {
        "02" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "45")],
            r#"{"code": 20429, "message": "Too Many Requests"}"#,
        )
            .into_response(),
        "03" => (
            StatusCode::BAD_GATEWAY,
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response(),
        "04" => (
            StatusCode::BAD_REQUEST,
            format!(r#"{{"code": 21211, "message": "The 'To' number {to} is not a valid phone number."}}"#),
        )
            .into_response(),
        "05" => (StatusCode::CREATED, "{garbled").into_response(),
        "06" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            (StatusCode::CREATED, r#"{"sid": "SMlate"}"#).into_response()
        }
        _ => (
            StatusCode::CREATED,
            format!(r#"{{"sid": "SM{}", "status": "queued"}}"#, &to[1..]),
        )
            .into_response(),
    }
}

pub async fn twilio_server() -> (Arc<Twilio>, String) {
    let state = Arc::new(Twilio::default());
    let app = axum::Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
        .route(
            "/2010-04-01/Accounts/{file}",
            axum::routing::get(|Path(file): Path<String>, headers: HeaderMap| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                if file != "AC123.json" || auth != Some("Basic QUMxMjM6c2VjcmV0") {
                    return (StatusCode::UNAUTHORIZED, r#"{"code": 20003}"#.to_owned());
                }
                (StatusCode::OK, r#"{"sid": "AC123", "status": "active"}"#.to_owned())
            }),
        )
        .with_state(Arc::clone(&state));
    (state, serve(app).await)
}

pub fn twilio_config(base: &str) -> tangazo::channels::twilio::TwilioConfig {
    toml::from_str(&format!(
        "base_url = \"{base}\"\naccount_sid = \"AC123\"\nauth_token = \"secret\"\nfrom = \"M-PESA\""
    ))
    .unwrap()
}

#[tokio::test]
async fn twilio_sends_one_request_per_message_and_classifies_each_answer() {
    let (server, base) = twilio_server().await;
    let sender = build(&twilio_config(&base));
    let batch: Vec<Message> = ["0712000001", "0712000002", "0712000003", "0712000004", "0712000005"]
        .iter()
        .map(|n| sms(n, "M-PESA: Maintenance tonight."))
        .collect();
    let results = sender.send(&batch).await;
    assert_eq!(
        results[0],
        Ok(Receipt {
            provider_id: Some("SM254712000001".into()),
            ..Receipt::default()
        })
    );
    match &results[1] {
        Err(e @ SendError::Transient { .. }) => assert_eq!(e.retry_after(), Some(Duration::from_secs(45))),
        other => panic!("429 is retried after Retry-After: {other:?}"),
    }
    match &results[2] {
        Err(e @ SendError::Uncertain { message, .. }) => {
            assert!(
                e.may_have_been_sent() && message.contains("502") && message.contains("Bad Gateway"),
                "{message}"
            )
        }
        other => panic!("a 5xx may have been accepted: {other:?}"),
    }
    assert!(
        matches!(&results[3], Err(SendError::Permanent { message }) if message.contains("21211")),
        "{:?}",
        results[3]
    );
    assert_eq!(
        results[4],
        Ok(Receipt::default()),
        "accepted, though the answer is garbled"
    );
    let requests = server.requests.lock().unwrap();
    assert_eq!(requests.len(), 5, "one request per message");
    let first = requests.iter().find(|r| r["To"] == "+254712000001").unwrap();
    assert_eq!(
        (first["From"].as_str(), first["Body"].as_str()),
        ("M-PESA", "M-PESA: Maintenance tonight.")
    );
    let validity: u64 = first["ValidityPeriod"].parse().unwrap();
    assert!(
        (3590..=3600).contains(&validity),
        "valid until the deadline: {validity}"
    );
}

#[tokio::test]
async fn twilio_does_not_send_a_message_whose_deadline_passed_while_it_waited() {
    // One connection and a provider that takes a second per request: the batch is handed over
    // on time, but its third message gets the connection two seconds later, past its deadline
    // of a second and a half.
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let app = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(
                |State(sent): State<Arc<Mutex<Vec<String>>>>, Form(form): Form<HashMap<String, String>>| async move {
                    sent.lock().unwrap().push(form["To"].clone());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    (StatusCode::CREATED, r#"{"sid": "SM1"}"#)
                },
            ),
        )
        .with_state(Arc::clone(&sent));
    let base = serve(app).await;
    let mut config = twilio_config(&base);
    config.connections = Some(1);
    let sender = build(&config);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_500);
    let batch: Vec<Message> = ["0712000001", "0712000002", "0712000003"]
        .iter()
        .map(|n| Message {
            not_after: Some(deadline),
            ..sms(n, "M-PESA: Maintenance tonight.")
        })
        .collect();
    let results = sender.send(&batch).await;
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert!(matches!(results[2], Err(SendError::TooLate)), "{results:?}");
    assert_eq!(*sent.lock().unwrap(), ["+254712000001", "+254712000002"]);
}

/// What a server saw of a client's connections: the most requests at once, and each
/// connection's peer address.
#[derive(Default)]
struct Connections {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    peers: Mutex<std::collections::HashSet<std::net::SocketAddr>>,
}

#[tokio::test]
async fn twilio_keeps_at_most_its_connections_in_flight_and_reuses_them() {
    use std::sync::atomic::Ordering::SeqCst;
    let seen = Arc::new(Connections::default());
    let app = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(
                |State(seen): State<Arc<Connections>>,
                 axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>| async move {
                    let now = seen.now.fetch_add(1, SeqCst) + 1;
                    seen.most.fetch_max(now, SeqCst);
                    seen.peers.lock().unwrap().insert(peer);
                    // Long enough for the requests of a batch to overlap.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    seen.now.fetch_sub(1, SeqCst);
                    (StatusCode::CREATED, r#"{"sid": "SM1"}"#)
                },
            ),
        )
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let mut config = twilio_config(&base);
    config.connections = Some(3);
    let sender = build(&config);
    let batch: Vec<Message> = (0..30)
        .map(|i| sms(&format!("07120000{i:02}"), "M-PESA: Maintenance tonight."))
        .collect();
    // Two batches at once share the connections.
    let (first, second) = tokio::join!(sender.send(&batch[..15]), sender.send(&batch[15..]));
    assert!(first.iter().chain(&second).all(Result::is_ok));
    assert_eq!(
        seen.most.load(SeqCst),
        3,
        "never more than `connections` requests at once"
    );
    assert_eq!(
        seen.peers.lock().unwrap().len(),
        3,
        "30 requests over the 3 connections, each kept alive"
    );
    let zero = toml::from_str::<tangazo::channels::twilio::TwilioConfig>(&format!(
        "base_url = \"{base}\"\naccount_sid = \"AC123\"\nauth_token = \"secret\"\nfrom = \"M-PESA\"\nconnections = 0"
    ))
    .unwrap();
    assert!(zero.validate().unwrap_err().contains("connections must be at least 1"));
}

#[tokio::test]
async fn twilio_without_an_answer_in_time_may_have_sent() {
    let (_server, base) = twilio_server().await;
    let config = twilio_config(&base);
    let limits = tangazo::channels::Limits {
        timeout: Some("1s".parse().unwrap()),
        ..tangazo::channels::Limits::default()
    };
    let sender =
        tangazo::channels::limits::Limited::wrap(build(&config), &limits, &tangazo::channels::limits::Share::default());
    let results = sender.send(&[sms("0712000006", "slow")]).await;
    assert!(matches!(&results[0], Err(e) if e.may_have_been_sent()), "{results:?}");
    let wrong = toml::from_str::<tangazo::channels::twilio::TwilioConfig>(&format!(
        "base_url = \"{base}\"\naccount_sid = \"AC123\"\nauth_token = \"wrong\"\nfrom = \"M-PESA\""
    ))
    .unwrap();
    let results = build(&wrong).send(&[sms("0712000001", "hi")]).await;
    assert!(
        matches!(&results[0], Err(SendError::Transient { message, .. }) if message.contains("401") && !message.contains("wrong")),
        "bad credentials fail over and are never echoed: {results:?}"
    );
}

// ---------------------------------------------------------------- Africa's Talking

#[derive(Default)]
pub struct Talking {
    pub requests: Mutex<Vec<(Vec<String>, String)>>,
}

/// Africa's Talking's bulk messaging API as documented: one status per number, picked by the
/// number's last two digits; a message text of "html" or "garbled" picks a broken answer.
async fn talking(
    State(state): State<Arc<Talking>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if headers.get("apikey").and_then(|v| v.to_str().ok()) != Some("key-1")
        || form.get("username").map(String::as_str) != Some("sandbox")
    {
        return (StatusCode::UNAUTHORIZED, "The supplied authentication is invalid").into_response();
    }
    let numbers: Vec<String> = form["to"].split(',').map(str::to_owned).collect();
    let message = form["message"].clone();
    state.requests.lock().unwrap().push((numbers.clone(), message.clone()));
    match message.as_str() {
        "html" => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<html><body>Internal Server Error</body></html>",
            )
                .into_response();
        }
        "garbled" => return (StatusCode::CREATED, "{\"SMSMessageData\": [").into_response(),
        _ => {}
    }
    let recipients: Vec<serde_json::Value> = numbers
        .iter()
        .map(|n| {
            let (code, status) = match &n[n.len() - 2..] {
                "03" => (403, "InvalidPhoneNumber"),
                "05" => (405, "InsufficientBalance"),
                "07" => (407, "CouldNotRoute"),
                "09" => (409, "DoNotDisturbRejection"),
                _ => (101, "Success"),
            };
            serde_json::json!({"statusCode": code, "number": n, "status": status, "cost": "KES 0.8000", "messageId": format!("ATXid_{n}")})
        })
        .collect();
    let body = serde_json::json!({"SMSMessageData": {"Message": format!("Sent to {}/{}", numbers.len(), numbers.len()), "Recipients": recipients}});
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

pub async fn talking_server() -> (Arc<Talking>, String) {
    let state = Arc::new(Talking::default());
    let app = axum::Router::new()
        .route("/version1/messaging", post(talking))
        .route(
            "/version1/user",
            axum::routing::get(|headers: HeaderMap| async move {
                match headers.get("apikey").and_then(|v| v.to_str().ok()) {
                    Some("key-1") => (StatusCode::OK, r#"{"UserData": {"balance": "KES 1234.5000"}}"#),
                    _ => (StatusCode::UNAUTHORIZED, "The supplied authentication is invalid"),
                }
            }),
        )
        .with_state(Arc::clone(&state));
    (state, serve(app).await)
}

pub fn talking_config(base: &str, batch: usize) -> tangazo::channels::africastalking::AfricasTalkingConfig {
    toml::from_str(&format!(
        "base_url = \"{base}\"\nusername = \"sandbox\"\napi_key = \"key-1\"\nbatch = {batch}\npause = \"10m\""
    ))
    .unwrap()
}

#[tokio::test]
async fn africas_talking_batches_identical_texts_and_maps_each_recipient() {
    let (server, base) = talking_server().await;
    let sender = build(&talking_config(&base, 3));
    let mut batch: Vec<Message> = (10..17).map(|i| sms(&format!("07120000{i}"), "English text")).collect();
    batch.push(sms("0712000003", "English text"));
    batch.push(sms("0712000007", "Swahili text"));
    batch.push(sms("0712000009", "Swahili text"));
    let results = sender.send(&batch).await;
    assert!(
        results[..7]
            .iter()
            .all(|r| matches!(r, Ok(Receipt { provider_id: Some(id), .. }) if id.starts_with("ATXid_")))
    );
    assert!(matches!(&results[7], Err(SendError::Permanent { message }) if message.contains("403")));
    assert!(matches!(&results[8], Err(SendError::Transient { message, .. }) if message.contains("407")));
    assert!(matches!(&results[9], Err(SendError::Permanent { message }) if message.contains("409")));
    let requests = server.requests.lock().unwrap();
    // 8 English recipients in requests of at most 3, and 2 Swahili in one.
    let mut sizes: Vec<(usize, &str)> = requests.iter().map(|(n, m)| (n.len(), m.as_str())).collect();
    sizes.sort();
    assert_eq!(
        sizes,
        [
            (2, "English text"),
            (2, "Swahili text"),
            (3, "English text"),
            (3, "English text")
        ]
    );
}

#[tokio::test]
async fn africas_talking_broken_answers_are_clear_transient_errors() {
    let (_server, base) = talking_server().await;
    let sender = build(&talking_config(&base, 100));
    for (text, needle) in [("html", "Internal Server Error"), ("garbled", "not the expected JSON")] {
        let results = sender.send(&[sms("0712000011", text), sms("0712000012", text)]).await;
        for r in &results {
            assert!(
                matches!(r, Err(e) if e.is_transient() && e.to_string().contains(needle)),
                "{r:?}"
            );
        }
    }
}

#[tokio::test]
async fn insufficient_balance_pauses_africas_talking_and_the_channel_fails_over() {
    let (talking_state, talking_base) = talking_server().await;
    let (twilio_state, twilio_base) = twilio_server().await;
    let at = build(&talking_config(&talking_base, 100));
    let results = at.send(&[sms("0712000005", "hello"), sms("0712000011", "hello")]).await;
    assert!(
        matches!(&results[0], Err(SendError::Paused { message, .. }) if message.contains("405") && message.contains("paused"))
    );
    assert!(results[1].is_ok(), "the others in the request went");
    // Paused: nothing more reaches Africa's Talking; every message fails over at once.
    let later = at.send(&[sms("0712000012", "hello")]).await;
    assert!(
        matches!(&later[0], Err(e) if e.fails_over() && e.to_string().contains("paused")),
        "{later:?}"
    );
    assert_eq!(talking_state.requests.lock().unwrap().len(), 1);
    let twilio = build(&twilio_config(&twilio_base));
    assert!(twilio.send(&[sms("0712000012", "hello")]).await[0].is_ok());
    assert_eq!(twilio_state.requests.lock().unwrap().len(), 1);
}

/// `senders check` asks each backend whether it answers, sending nothing to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_check_reports_each_backend_without_sending() {
    let (twilio_state, twilio_base) = twilio_server().await;
    let (talking_state, talking_base) = talking_server().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cli = crate::cli::Cli::new();
    std::fs::write(
        cli.path("tangazo.toml"),
        format!(
            "[senders.outbox]\ntype = \"file\"\ndir = \"outbox\"\n\
             [senders.twilio]\ntype = \"twilio\"\nbase_url = \"{twilio_base}\"\naccount_sid = \"AC123\"\nauth_token = \"secret\"\nfrom = \"MPESA\"\n\
             [senders.at]\ntype = \"africastalking\"\nbase_url = \"{talking_base}\"\nusername = \"sandbox\"\napi_key = \"key-1\"\n\
             [senders.mail]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = {closed}\ntls = \"none\"\nfrom = \"n@example.co.ke\"\n\
             [channels]\nsms = [\"at\", \"twilio\"]\nemail = [\"mail\"]\nwebhook = [\"outbox\"]\n"
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let out = cli.run(&["senders", "check"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            cli,
        )
    })
    .await
    .unwrap();
    let (code, stdout, _cli) = out;
    assert_eq!(code, Some(2), "{stdout}");
    assert!(
        stdout.contains("twilio (twilio): ok, account AC123 is active"),
        "{stdout}"
    );
    assert!(
        stdout.contains("at (africastalking): ok, user sandbox: balance KES 1234.5000"),
        "{stdout}"
    );
    assert!(stdout.contains("outbox (file): ok"), "{stdout}");
    assert!(
        stdout.contains("mail (smtp): FAILED, cannot connect to 127.0.0.1"),
        "{stdout}"
    );
    assert!(!stdout.contains("secret") && !stdout.contains("key-1"), "{stdout}");
    assert!(
        twilio_state.requests.lock().unwrap().is_empty() && talking_state.requests.lock().unwrap().is_empty(),
        "nothing was sent"
    );
}

/// Africa's Talking out of balance while a window's notices go out: the operator sees an
/// alarm in `deliveries summary`, and the SMS went through the next backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_gateway_is_an_alarm_in_the_summary() {
    let (_talking, talking_base) = talking_server().await;
    let (twilio_state, twilio_base) = twilio_server().await;
    let cli = crate::cli::Cli::new();
    std::fs::write(
        cli.path("tangazo.toml"),
        format!(
            "[senders.outbox]\ntype = \"file\"\ndir = \"outbox\"\n\
             [senders.twilio]\ntype = \"twilio\"\nbase_url = \"{twilio_base}\"\naccount_sid = \"AC123\"\nauth_token = \"secret\"\nfrom = \"MPESA\"\n\
             [senders.at]\ntype = \"africastalking\"\nbase_url = \"{talking_base}\"\nusername = \"sandbox\"\napi_key = \"key-1\"\n\
             [channels]\nsms = [\"at\", \"twilio\"]\nemail = [\"outbox\"]\nwebhook = [\"outbox\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        cli.path("people.csv"),
        "kind,name,phone,email,locale,zone,components,channels,opt_out\ncustomer,Pays,0712000005,,en,,,sms,\n",
    )
    .unwrap();
    let summary = tokio::task::spawn_blocking(move || {
        cli.ok(&["recipients", "import", "people.csv"]);
        let id = crate::cli::add_window(&cli);
        cli.ok(&["run-once", crate::cli::NOW]);
        cli.ok(&["deliveries", "summary", "--window", &id])
    })
    .await
    .unwrap();
    assert!(
        summary.contains("sender at is paused") && summary.contains("405"),
        "{summary}"
    );
    assert_eq!(
        twilio_state.requests.lock().unwrap().len(),
        1,
        "the SMS went through Twilio"
    );
}
