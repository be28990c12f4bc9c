//! The peers Tangazo sends to during a run, served from the harness's own process on loopback
//! ports: fakes of Africa's Talking's bulk SMS API and Twilio's Messages API, a plain ESMTP
//! server, and a webhook receiver. Each records when every message arrived, keyed by its
//! address (the phone number, the RCPT address, the endpoint's URL), so the harness can set
//! each arrival against the delivery's slot in the ledger.
//!
//! They do as little as they can: they share the machine's cores with Tangazo.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

/// Milliseconds since the Unix epoch, as the ledger keeps instants.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// One message as a sink saw it arrive.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub key: String,
    pub at_ms: i64,
}

/// What one sink has received since it was last drained.
#[derive(Debug, Default)]
pub struct Recorder {
    /// `http://127.0.0.1:PORT`, the sink's own address (empty for the SMTP sink).
    origin: String,
    arrivals: Mutex<Vec<Arrival>>,
    requests: AtomicU64,
    ids: AtomicU64,
}

impl Recorder {
    /// Records one request carrying messages for `keys`, all arriving now.
    fn record<I: IntoIterator<Item = String>>(&self, keys: I) {
        let at_ms = now_ms();
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.extend(keys.into_iter().map(|key| Arrival { key, at_ms }));
        }
    }

    /// The first of `n` fresh provider message ids.
    fn next_ids(&self, n: usize) -> u64 {
        self.ids.fetch_add(n as u64, Ordering::Relaxed)
    }

    /// Everything recorded so far and the number of requests it came in; starts afresh.
    pub fn drain(&self) -> (Vec<Arrival>, u64) {
        let arrivals = self
            .arrivals
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        (arrivals, self.requests.swap(0, Ordering::Relaxed))
    }
}

/// A running sink: where it listens and what it has received.
#[derive(Debug, Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    pub recorder: Arc<Recorder>,
}

impl Sink {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL the webhook sink records a biller's events under.
    pub fn hook_url(&self, biller: i64) -> String {
        format!("{}/hook/{biller}", self.base_url())
    }
}

#[derive(Debug, Clone)]
pub struct Sinks {
    pub africastalking: Sink,
    pub twilio: Sink,
    pub smtp: Sink,
    pub webhook: Sink,
}

/// Starts the four sinks on loopback ports chosen by the system; they serve until the process
/// ends.
pub async fn start() -> anyhow::Result<Sinks> {
    let africastalking = serve_http("Africa's Talking", |recorder| {
        Router::new()
            .route("/version1/messaging", post(africastalking_messaging))
            .with_state(recorder)
    })
    .await?;
    let twilio = serve_http("Twilio", |recorder| {
        Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio_message))
            .with_state(recorder)
    })
    .await?;
    let webhook = serve_http("webhook", |recorder| {
        Router::new()
            .route("/hook/{biller}", post(webhook_event))
            .with_state(recorder)
    })
    .await?;
    let smtp = serve_smtp().await?;
    Ok(Sinks {
        africastalking,
        twilio,
        smtp,
        webhook,
    })
}

async fn loopback(what: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .with_context(|| format!("binding the {what} sink to a loopback port"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

async fn serve_http(what: &'static str, app: impl FnOnce(Arc<Recorder>) -> Router) -> anyhow::Result<Sink> {
    let (listener, addr) = loopback(what).await?;
    let recorder = Arc::new(Recorder {
        origin: format!("http://{addr}"),
        ..Recorder::default()
    });
    let router = app(Arc::clone(&recorder));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("fanout: the {what} sink stopped: {e}");
        }
    });
    Ok(Sink { addr, recorder })
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, why.to_owned()).into_response()
}

/// `POST /version1/messaging`: Africa's Talking's bulk SMS. Every number in `to` is accepted
/// (status 101, "Success"), in the documented answer.
async fn africastalking_messaging(
    State(recorder): State<Arc<Recorder>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !headers.contains_key("apikey") {
        return refuse(StatusCode::UNAUTHORIZED, "The supplied authentication is invalid");
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("username").is_empty() || field("message").is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "username and message are required");
    }
    let numbers: Vec<&str> = field("to")
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if numbers.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "to is required");
    }
    recorder.record(numbers.iter().map(|n| (*n).to_owned()));
    let first = recorder.next_ids(numbers.len());
    let recipients: Vec<serde_json::Value> = numbers
        .iter()
        .zip(first..)
        .map(|(number, id)| {
            json!({
                "statusCode": 101,
                "number": number,
                "status": "Success",
                "cost": "KES 0.8000",
                "messageId": format!("ATXid_{id:032x}"),
            })
        })
        .collect();
    let n = numbers.len();
    let total = 0.8 * n as f64;
    let answer = json!({
        "SMSMessageData": {
            "Message": format!("Sent to {n}/{n} Total Cost: KES {total:.4}"),
            "Recipients": recipients,
        }
    });
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

/// `POST /2010-04-01/Accounts/{sid}/Messages.json`: one message, queued.
async fn twilio_message(
    State(recorder): State<Arc<Recorder>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !headers.contains_key(axum::http::header::AUTHORIZATION) {
        return refuse(StatusCode::UNAUTHORIZED, "Authenticate");
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let (to, body) = (field("To"), field("Body"));
    if to.is_empty() || body.is_empty() || (field("From").is_empty() && field("MessagingServiceSid").is_empty()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "To, Body and From or MessagingServiceSid are required",
        );
    }
    recorder.record([to.to_owned()]);
    let id = recorder.next_ids(1);
    let answer = json!({
        "sid": format!("SM{id:032x}"),
        "account_sid": account,
        "to": to,
        "from": field("From"),
        "body": body,
        "status": "queued",
        "num_segments": "1",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
    });
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

/// `POST /hook/{biller}`: a webhook receiver that answers at once. The body is read in full so
/// the connection can be reused.
async fn webhook_event(
    State(recorder): State<Arc<Recorder>>,
    Path(biller): Path<String>,
    headers: HeaderMap,
    _body: Bytes,
) -> StatusCode {
    if !headers.contains_key("webhook-id") || !headers.contains_key("webhook-signature") {
        return StatusCode::BAD_REQUEST;
    }
    recorder.record([format!("{}/hook/{biller}", recorder.origin)]);
    StatusCode::NO_CONTENT
}

async fn serve_smtp() -> anyhow::Result<Sink> {
    let (listener, addr) = loopback("SMTP").await?;
    let recorder = Arc::new(Recorder::default());
    let sessions = Arc::clone(&recorder);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let recorder = Arc::clone(&sessions);
                    tokio::spawn(async move {
                        if let Err(e) = smtp_session(stream, &recorder).await {
                            eprintln!("fanout: an SMTP session ended with an error: {e}");
                        }
                    });
                }
                Err(e) => {
                    eprintln!("fanout: the SMTP sink stopped accepting: {e}");
                    return;
                }
            }
        }
    });
    Ok(Sink { addr, recorder })
}

const EHLO: &[u8] = b"250-fanout.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n";

/// One SMTP session (RFC 5321 without TLS or AUTH): greeting, EHLO/HELO, MAIL, RCPT, DATA
/// (dot-unstuffed up to the lone dot), RSET, NOOP, QUIT. Pipelined commands are answered in
/// order, and the answers flushed when no command is left waiting.
async fn smtp_session(stream: TcpStream, recorder: &Recorder) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut write = BufWriter::new(write);
    write.write_all(b"220 fanout.bench ESMTP\r\n").await?;
    write.flush().await?;
    let mut line = Vec::with_capacity(512);
    let mut in_transaction = false;
    let mut recipients: Vec<String> = Vec::new();
    let mut queued = 0_u64;
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let command = String::from_utf8_lossy(&line);
        let command = command.trim_end_matches(['\r', '\n']);
        let verb = command.get(..4).unwrap_or(command).to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => write.write_all(EHLO).await?,
            "HELO" => write.write_all(b"250 fanout.bench\r\n").await?,
            "MAIL" if command.to_ascii_uppercase().starts_with("MAIL FROM:") => {
                in_transaction = true;
                recipients.clear();
                write.write_all(b"250 2.1.0 Ok\r\n").await?;
            }
            "RCPT" if !in_transaction => write.write_all(b"503 5.5.1 Error: need MAIL command\r\n").await?,
            "RCPT" => match angle_address(command) {
                Some(address) if command.to_ascii_uppercase().starts_with("RCPT TO:") => {
                    recipients.push(address.to_owned());
                    write.write_all(b"250 2.1.5 Ok\r\n").await?;
                }
                _ => write.write_all(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n").await?,
            },
            "DATA" if recipients.is_empty() => write.write_all(b"503 5.5.1 Error: need RCPT command\r\n").await?,
            "DATA" => {
                write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                write.flush().await?;
                if !read_message(&mut read, &mut line).await? {
                    return Ok(());
                }
                recorder.record(recipients.drain(..));
                in_transaction = false;
                queued += 1;
                write
                    .write_all(format!("250 2.0.0 Ok: queued as {queued:X}\r\n").as_bytes())
                    .await?;
            }
            "RSET" => {
                in_transaction = false;
                recipients.clear();
                write.write_all(b"250 2.0.0 Ok\r\n").await?;
            }
            "NOOP" => write.write_all(b"250 2.0.0 Ok\r\n").await?,
            "VRFY" => write.write_all(b"252 2.5.2 Cannot VRFY user\r\n").await?,
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                write.flush().await?;
                return Ok(());
            }
            _ => write.write_all(b"502 5.5.2 Error: command not recognized\r\n").await?,
        }
        if read.buffer().is_empty() {
            write.flush().await?;
        }
    }
}

/// Reads a message's lines up to the lone dot, undoing dot-stuffing (the text itself is not
/// kept). False if the client went away first.
async fn read_message<R: AsyncBufReadExt + Unpin>(read: &mut R, line: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut size = 0_usize;
    loop {
        line.clear();
        if read.read_until(b'\n', line).await? == 0 {
            return Ok(false);
        }
        if line.as_slice() == b".\r\n" || line.as_slice() == b".\n" {
            return Ok(true);
        }
        let unstuffed = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
        size += unstuffed.len();
        if size > 52_428_800 {
            return Err(std::io::Error::other("a message over the advertised SIZE"));
        }
    }
}

/// The address between `<` and `>` in a MAIL or RCPT command.
fn angle_address(command: &str) -> Option<&str> {
    let start = command.find('<')? + 1;
    let end = start + command[start..].find('>')?;
    Some(&command[start..end])
}
