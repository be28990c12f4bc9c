//! Billers' webhooks end to end: registered through the command line, fanned out per endpoint,
//! POSTed by the `webhook` backend, and verified by an independent implementation of the
//! Standard Webhooks specification (the `standardwebhooks` crate) in a receiver on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tangazo::channels::webhook::WebhookSender;
use tangazo::channels::webhook::guard::{Guard, SystemLookup};
use tangazo::channels::{Address, Endpoint, Message, SendError, Sender};
use tangazo::domain::{Channel, Locale, RecipientId, Rendered, Secret};

use crate::cli::{Cli, NOW, add_window};

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
pub struct Receiver {
    pub seen: Mutex<Vec<Received>>,
    flaky_failures: Mutex<u32>,
}

async fn record(state: &Receiver, path: &str, headers: HeaderMap, body: Bytes) {
    state.seen.lock().unwrap().push(Received {
        path: path.to_owned(),
        headers,
        body,
    });
}

/// Starts the receiver on its own runtime (the command-line tests are synchronous).
pub fn receiver() -> (Arc<Receiver>, String) {
    let state = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route(
            "/ok",
            post(|State(s): State<Arc<Receiver>>, h: HeaderMap, b: Bytes| async move {
                record(&s, "/ok", h, b).await;
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/flaky",
            post(|State(s): State<Arc<Receiver>>, h: HeaderMap, b: Bytes| async move {
                record(&s, "/flaky", h, b).await;
                let mut failures = s.flaky_failures.lock().unwrap();
                *failures += 1;
                if *failures == 1 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/down",
            post(|State(s): State<Arc<Receiver>>, h: HeaderMap, b: Bytes| async move {
                record(&s, "/down", h, b).await;
                StatusCode::SERVICE_UNAVAILABLE
            }),
        )
        .route(
            "/redirect",
            post(|State(s): State<Arc<Receiver>>, h: HeaderMap, b: Bytes| async move {
                record(&s, "/redirect", h, b).await;
                (StatusCode::TEMPORARY_REDIRECT, [("location", "/ok")])
            }),
        )
        .route(
            "/gone",
            post(|State(s): State<Arc<Receiver>>, h: HeaderMap, b: Bytes| async move {
                record(&s, "/gone", h, b).await;
                StatusCode::GONE
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                StatusCode::OK
            }),
        )
        .route(
            "/endless",
            post(|| async {
                let drip = futures_util::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
                });
                Response::builder()
                    .status(200)
                    .body(Body::from_stream(drip))
                    .unwrap()
                    .into_response()
            }),
        )
        .with_state(Arc::clone(&state));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (state, format!("http://{addr}"))
}

/// The independent verifier: does `secret` sign this request?
fn verifies(secret: &str, r: &Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .is_ok()
}

fn loopback_guard() -> Guard {
    Guard::new(true, vec!["127.0.0.0/8".parse().unwrap()], Arc::new(SystemLookup))
}

fn event(url: &str, secrets: Vec<Secret>, key: &str) -> Message {
    Message {
        idempotency_key: key.into(),
        channel: Channel::Webhook,
        to: Address::Endpoint {
            biller: RecipientId(1),
            endpoint: Some(Endpoint {
                id: 1,
                url: url.into(),
                secrets,
            }),
        },
        kind: "announced".into(),
        notice: "announced".into(),
        window_id: Some(1),
        broadcast: None,
        revision: 1,
        locale: Locale::En,
        attempt: 1,
        possibly_duplicate: false,
        not_after: None,
        unsubscribe: None,
        content: Arc::new(Rendered::Webhook {
            payload: serde_json::json!({"type": "window.announced", "data": {"window_id": 1}}),
        }),
    }
}

#[tokio::test]
async fn signed_as_the_specification_says_and_every_misbehaving_receiver_is_handled() {
    let (state, base) = receiver();
    let secret = tangazo::channels::webhook::sign::new_secret().unwrap();
    let sender = WebhookSender::new("hooks", loopback_guard(), Duration::from_secs(1), 4).unwrap();
    let send = |path: &str, key: &str| {
        let m = event(&format!("{base}{path}"), vec![secret.clone()], key);
        let sender = &sender;
        async move { sender.send(std::slice::from_ref(&m)).await.remove(0) }
    };
    assert!(send("/ok", "w1.r1.announced.7.webhook.e1").await.is_ok());
    let seen = state.seen.lock().unwrap().clone();
    let ok = &seen[0];
    assert!(verifies(secret.expose(), ok), "the verifier accepts the signature");
    let body: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(body["type"], "window.announced");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
    assert_eq!(ok.headers["webhook-id"], "w1.r1.announced.7.webhook.e1");
    // A tampered body is rejected by the verifier.
    let tampered = Received {
        body: Bytes::from(
            String::from_utf8(ok.body.to_vec())
                .unwrap()
                .replace("window_id\":1", "window_id\":2"),
        ),
        ..ok.clone()
    };
    assert!(!verifies(secret.expose(), &tampered));

    // A 503 is retried; the retry carries the same webhook-id.
    assert!(matches!(send("/flaky", "k-flaky").await, Err(e) if e.is_transient()));
    assert!(send("/flaky", "k-flaky").await.is_ok());
    let ids: Vec<String> = state
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/flaky")
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["k-flaky", "k-flaky"]);

    // A redirect is not followed; 410 is final and says the endpoint is gone.
    let before = state.seen.lock().unwrap().iter().filter(|r| r.path == "/ok").count();
    assert!(
        matches!(send("/redirect", "k-r").await, Err(SendError::Permanent { message }) if message.contains("redirect"))
    );
    assert_eq!(
        state.seen.lock().unwrap().iter().filter(|r| r.path == "/ok").count(),
        before
    );
    assert!(matches!(send("/gone", "k-g").await, Err(SendError::Gone { .. })));

    // A slow endpoint and an endless body are cut off by the time bound: maybe received, so
    // retried and flagged.
    for path in ["/slow", "/endless"] {
        let started = std::time::Instant::now();
        let r = send(path, "k-s").await;
        assert!(matches!(&r, Err(e) if e.may_have_been_sent()), "{path}: {r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{path} took {:?}",
            started.elapsed()
        );
    }

    // Both secrets sign during a rotation; each verifies on its own.
    let new = tangazo::channels::webhook::sign::new_secret().unwrap();
    let m = event(&format!("{base}/ok"), vec![new.clone(), secret.clone()], "k-rot");
    assert!(sender.send(std::slice::from_ref(&m)).await[0].is_ok());
    let last = state.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        last.headers["webhook-signature"].to_str().unwrap().split(' ').count(),
        2
    );
    assert!(verifies(new.expose(), &last) && verifies(secret.expose(), &last));

    // The guard holds at send time too: without the allowlist, loopback is refused.
    let strict = WebhookSender::new(
        "hooks",
        Guard::new(true, vec![], Arc::new(SystemLookup)),
        Duration::from_secs(1),
        4,
    )
    .unwrap();
    let m = event(&format!("{base}/ok"), vec![secret.clone()], "k-strict");
    let r = strict.send(std::slice::from_ref(&m)).await.remove(0);
    assert!(
        matches!(&r, Err(SendError::Permanent { message }) if message.contains("loopback")),
        "{r:?}"
    );
    let by_name = event(&base.replace("127.0.0.1", "localhost"), vec![secret], "k-name");
    let r = strict.send(std::slice::from_ref(&by_name)).await.remove(0);
    assert!(
        matches!(&r, Err(SendError::Permanent { message }) if message.contains("loopback")),
        "{r:?}"
    );
}

fn hooks_config(cli: &Cli) {
    std::fs::write(
        cli.path("tangazo.toml"),
        "[senders.hooks]\ntype = \"webhook\"\nallow_http = true\nallow = [\"127.0.0.0/8\"]\n\
         [senders.outbox]\ntype = \"file\"\ndir = \"outbox\"\n\
         [channels]\nsms = [\"outbox\"]\nemail = [\"outbox\"]\nwebhook = [\"hooks\"]\n",
    )
    .unwrap();
    std::fs::write(
        cli.path("billers.csv"),
        "kind,name,phone,email,locale,zone,components,channels,opt_out\n\
         biller,Kenya Power,,ops@kplc.example.co.ke,en,Africa/Nairobi,,webhook,\n\
         biller,Nairobi Exchange,,ops@nse.example.co.ke,en,Europe/Berlin,,webhook,\n",
    )
    .unwrap();
}

#[test]
fn billers_register_endpoints_and_each_receives_signed_events() {
    let (state, base) = receiver();
    let cli = Cli::new();
    hooks_config(&cli);
    cli.ok(&["recipients", "import", "billers.csv"]);
    // Hostile URLs are refused at registration, naming why.
    for (url, why) in [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://10.0.0.8/hook", "private"),
        ("ftp://example.com/", "https"),
        ("https://user:pw@example.com/", "user name"),
    ] {
        let err = cli.bad(&["webhooks", "add", "--biller", "ops@kplc.example.co.ke", "--url", url]);
        assert!(err.contains("--url") && err.contains(why), "{url}: {err}");
    }
    let err = cli.bad(&[
        "webhooks",
        "add",
        "--biller",
        "ops@kplc.example.co.ke",
        "--url",
        &format!("{base}/ok"),
        "--events",
        "window.exploded",
    ]);
    assert!(err.contains("--events"), "{err}");
    let added = cli.ok(&[
        "webhooks",
        "add",
        "--biller",
        "ops@kplc.example.co.ke",
        "--url",
        &format!("{base}/ok"),
        "--json",
    ]);
    let added: serde_json::Value = serde_json::from_str(&added).unwrap();
    let secret = added["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    // A second endpoint for the same biller, only for cancellations: it hears nothing now.
    cli.ok(&[
        "webhooks",
        "add",
        "--biller",
        "ops@kplc.example.co.ke",
        "--url",
        &format!("{base}/flaky"),
        "--events",
        "window.cancelled",
    ]);
    let list = cli.ok(&["webhooks", "list"]);
    assert!(
        list.contains("/ok") && list.contains("events window.cancelled") && !list.contains("whsec_"),
        "{list}"
    );
    let tested = cli.ok(&["webhooks", "test", "1"]);
    assert!(tested.contains("accepted a signed test event"), "{tested}");
    let ping = state.seen.lock().unwrap().pop().unwrap();
    assert!(verifies(&secret, &ping));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&ping.body).unwrap()["type"],
        "webhook.test"
    );

    let id = add_window(&cli);
    cli.ok(&["run-once", NOW]);
    let seen = state.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one endpoint wants announcements: {seen:?}");
    assert!(verifies(&secret, &seen[0]));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["type"], "window.announced");
    let data = &body["data"];
    assert_eq!(
        (data["window_id"].as_str().map(|_| ()), data["revision"].as_u64()),
        (None, Some(1))
    );
    assert_eq!(data["window_id"].to_string(), id);
    assert_eq!(data["starts_at"], "2015-04-17T21:00:00Z");
    assert_eq!(data["starts_at_local"], "2015-04-18T00:00:00+03:00");
    assert_eq!(data["zone"], "Africa/Nairobi");
    assert_eq!(data["components"][0]["id"], "send-money");
    assert!(data.get("previous").is_none());
    // The other biller has no endpoint: its event is refused, naming what to do.
    let failed = cli.ok(&["deliveries", "list", "--window", &id, "--state", "failed"]);
    assert!(failed.contains("webhooks add"), "{failed}");
    let failed: serde_json::Value =
        serde_json::from_str(&cli.ok(&["deliveries", "list", "--window", &id, "--state", "failed", "--json"])).unwrap();
    let delivery = failed[0]["id"].to_string();
    let attempts = cli.ok(&["deliveries", "attempts", &delivery]);
    assert!(
        attempts.contains("hooks") && attempts.contains("permanent") && attempts.contains("webhooks add"),
        "{attempts}"
    );

    // Rotation: both secrets sign the next event; the cancellation reaches both endpoints.
    let rotated: serde_json::Value =
        serde_json::from_str(&cli.ok(&["webhooks", "rotate-secret", "1", "--json"])).unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    cli.ok(&["window", "cancel", &id, NOW, "--reason", "Vendor delay"]);
    cli.ok(&["run-once", NOW]);
    let seen = state.seen.lock().unwrap().clone();
    let cancelled: Vec<&Received> = seen.iter().skip(1).collect();
    assert_eq!(cancelled.len(), 2, "{cancelled:?}");
    let to_ok = cancelled.iter().find(|r| r.path == "/ok").unwrap();
    assert!(verifies(&new_secret, to_ok) && verifies(&secret, to_ok));
    let body: serde_json::Value = serde_json::from_slice(&to_ok.body).unwrap();
    assert_eq!(body["type"], "window.cancelled");
    assert_eq!(body["data"]["reason"], "Vendor delay");
    assert!(body["data"]["previous"]["starts_at"].is_string());
    // The flaky endpoint failed once (503): retried later with the same id.
    let flaky = cancelled.iter().find(|r| r.path == "/flaky").unwrap();
    assert!(flaky.headers["webhook-id"].to_str().unwrap().ends_with(".webhook.e2"));
    assert_ne!(flaky.headers["webhook-id"], to_ok.headers["webhook-id"]);

    // An endpoint that answers 410 Gone is disabled; nothing more is queued for it.
    cli.ok(&[
        "webhooks",
        "add",
        "--biller",
        "ops@nse.example.co.ke",
        "--url",
        &format!("{base}/gone"),
    ]);
    let second = add_window(&cli);
    cli.ok(&["run-once", NOW]);
    assert_eq!(
        state.seen.lock().unwrap().iter().filter(|r| r.path == "/gone").count(),
        1
    );
    let list = cli.ok(&["webhooks", "list"]);
    assert!(list.contains("disabled: the receiver answered 410 Gone"), "{list}");
    // The biller is told by email.
    cli.ok(&["run-once", NOW]);
    let email = std::fs::read_to_string(cli.path("outbox/email.jsonl")).unwrap();
    let told = email
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|m| m["to"] == "ops@nse.example.co.ke")
        .expect("an email to the biller");
    assert!(
        told["text"]
            .as_str()
            .unwrap()
            .contains("no longer receives outage events"),
        "{told}"
    );
    assert!(told["text"].as_str().unwrap().contains("/gone"), "{told}");
    cli.ok(&["window", "cancel", &second, NOW]);
    cli.ok(&["run-once", NOW]);
    assert_eq!(
        state.seen.lock().unwrap().iter().filter(|r| r.path == "/gone").count(),
        1,
        "not sent again"
    );
    cli.ok(&["webhooks", "enable", "3"]);
    // The reason, not "410" alone, which the receiver's port may hold.
    let list = cli.ok(&["webhooks", "list"]);
    assert!(!list.contains("410 Gone"), "{list}");
}

/// An endpoint that keeps failing for five days, across deliveries, is disabled; one success
/// in between would have ended the streak.
#[test]
fn an_endpoint_failing_for_five_days_is_disabled() {
    let (state, base) = receiver();
    let cli = Cli::new();
    hooks_config(&cli);
    cli.ok(&["recipients", "import", "billers.csv"]);
    cli.ok(&[
        "webhooks",
        "add",
        "--biller",
        "ops@kplc.example.co.ke",
        "--url",
        &format!("{base}/down"),
    ]);
    add_window(&cli);
    cli.ok(&["run-once", NOW]);
    assert_eq!(state.seen.lock().unwrap().len(), 1);
    assert!(!cli.ok(&["webhooks", "list"]).contains("disabled"));
    // Five days and three hours later, the 72-hour reminder fails too: the endpoint is off.
    cli.ok(&["run-once", "--now", "2015-04-15T09:00:00+03:00"]);
    assert!(state.seen.lock().unwrap().len() >= 2);
    let list = cli.ok(&["webhooks", "list"]);
    assert!(list.contains("disabled: failing since 2015-04-10"), "{list}");
}
