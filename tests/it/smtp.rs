//! The `smtp` backend against a real SMTP server (aiosmtpd, `tests/peers/smtp_peer.py`) on a
//! loopback port: a thousand notices arrive once each, multipart, with their Message-ID; a 4xx
//! is retried and delivered; a 5xx is final; STARTTLS against a server whose certificate a test
//! CA signed. The cases need `pip install -r tests/peers/requirements.txt`; they are ignored by a
//! plain `cargo test` and fail, never pass unchecked, when run without it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use tangazo::channels::registry::{Backend, BuildContext};
use tangazo::channels::smtp::SmtpConfig;
use tangazo::channels::{Address, Message, SendError, Sender};
use tangazo::domain::{Channel, EmailAddress, Locale, Rendered};

struct Peer {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Peer {
    /// Starts the SMTP peer; with `tls`, it offers (and requires) STARTTLS with a certificate
    /// for localhost signed by a throwaway CA, returned as the third element.
    fn start(tls: bool) -> (Peer, Option<PathBuf>) {
        Peer::start_with(tls, false)
    }

    /// `start`, with TLS from the first byte when `implicit`.
    fn start_with(tls: bool, implicit: bool) -> (Peer, Option<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/smtp_peer.py");
        let mut command = Command::new("python3");
        command
            .arg(script)
            .args(["--port", &port.to_string(), "--out", out.to_str().unwrap()]);
        let ca = tls.then(|| {
            let (ca, cert, key) = test_ca(dir.path());
            command.args(["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
            if implicit {
                command.arg("--implicit");
            }
            ca
        });
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs the SMTP peer");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        if line.trim() != "ready" {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the SMTP peer did not start (pip install -r tests/peers/requirements.txt): {err}");
        }
        (
            Peer {
                child,
                port,
                out,
                _dir: dir,
            },
            ca,
        )
    }

    fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A CA, and a certificate for localhost and 127.0.0.1 it signed: (ca.pem, server.pem, server.key).
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Tangazo test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

fn sender(port: u16, extra: &str) -> Arc<dyn Sender> {
    let config: SmtpConfig = toml::from_str(&format!(
        "host = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"notices@example.co.ke\"\nfrom_name = \"M-PESA\"\n\
         connections = 4\nunsubscribe_url = \"https://example.co.ke/unsubscribe/{{token}}?for={{email}}\"\n{extra}"
    ))
    .unwrap();
    config
        .build("mail", &BuildContext::with_console(std::io::sink()))
        .unwrap()
}

fn email(i: usize, to: &str) -> Message {
    Message {
        idempotency_key: format!("w1.r2.reminder:24h.{i}.email"),
        channel: Channel::Email,
        to: Address::Email(EmailAddress::parse(to).unwrap()),
        kind: "reminder".into(),
        notice: "reminder:24h".into(),
        window_id: Some(1),
        broadcast: None,
        revision: 2,
        locale: Locale::Sw,
        attempt: 1,
        possibly_duplicate: false,
        not_after: None,
        unsubscribe: Some(format!("{i}.signature")),
        content: Arc::new(Rendered::Email {
            subject: format!("M-PESA: Matengenezo {i}"),
            text: "Habari,\nmatengenezo yataanza baada ya saa 24.\n".into(),
            html: "<p>Habari, matengenezo yataanza baada ya saa 24.</p>".into(),
        }),
    }
}

#[tokio::test]
#[ignore = "needs aiosmtpd: pip install -r tests/peers/requirements.txt; run with -- --include-ignored"]
async fn a_thousand_notices_arrive_once_each_multipart_with_their_message_id() {
    let (peer, _) = Peer::start(false);
    let mail = sender(peer.port, "");
    let batch: Vec<Message> = (0..1000).map(|i| email(i, &format!("c{i}@example.co.ke"))).collect();
    for chunk in batch.chunks(250) {
        let results = mail.send(chunk).await;
        assert!(
            results.iter().all(Result::is_ok),
            "{:?}",
            results.iter().find(|r| r.is_err())
        );
    }
    let received = peer.received();
    assert_eq!(received.len(), 1000);
    let mut ids = HashSet::new();
    for r in &received {
        let data = r["data"].as_str().unwrap();
        let to = r["to"][0].as_str().unwrap();
        let i: usize = to.trim_start_matches('c').split('@').next().unwrap().parse().unwrap();
        let id = format!("Message-ID: <w1.r2.reminder=24h.{i}.email@example.co.ke>");
        assert!(data.contains(&id), "{id} in {data}");
        assert!(
            data.contains("multipart/alternative") && data.contains("text/plain") && data.contains("text/html"),
            "{data}"
        );
        assert!(
            data.contains(&format!(
                "List-Unsubscribe: <https://example.co.ke/unsubscribe/{i}.signature?for=c{i}%40example.co.ke>"
            )),
            "{data}"
        );
        assert!(
            data.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
            "{data}"
        );
        assert!(data.contains("From: M-PESA <notices@example.co.ke>"), "{data}");
        assert!(ids.insert(i), "{to} arrived twice");
    }
}

#[tokio::test]
#[ignore = "needs aiosmtpd: pip install -r tests/peers/requirements.txt; run with -- --include-ignored"]
async fn a_batch_larger_than_what_is_composed_at_once_keeps_its_order() {
    let (peer, _) = Peer::start(false);
    let mail = sender(peer.port, "");
    // The backend composes at most 500 at once: the outcomes of the later parts must still
    // land at their own messages.
    let to = |i: usize| match i {
        3 => "tempfail@example.co.ke".to_owned(),
        1_050 => "reject@example.co.ke".to_owned(),
        _ => format!("c{i}@example.co.ke"),
    };
    let batch: Vec<Message> = (0..1_100).map(|i| email(i, &to(i))).collect();
    let results = mail.send(&batch).await;
    assert_eq!(results.len(), 1_100);
    for (i, r) in results.iter().enumerate() {
        match i {
            3 => assert!(
                matches!(r, Err(SendError::Transient { message, .. }) if message.contains("451")),
                "{r:?}"
            ),
            1_050 => assert!(
                matches!(r, Err(SendError::Permanent { message }) if message.contains("550")),
                "{r:?}"
            ),
            _ => assert!(r.is_ok(), "message {i}: {r:?}"),
        }
    }
    let received = peer.received();
    assert_eq!(received.len(), 1_098);
    let mut ids = HashSet::new();
    for r in &received {
        assert!(ids.insert(r["to"][0].as_str().unwrap().to_owned()), "{r} arrived twice");
    }
}

#[tokio::test]
#[ignore = "needs aiosmtpd: pip install -r tests/peers/requirements.txt; run with -- --include-ignored"]
async fn an_email_whose_deadline_passes_before_it_has_a_connection_is_not_sent() {
    let (peer, _) = Peer::start(false);
    let mail = sender(peer.port, "");
    // Handed over on time (the dispatcher checked), its deadline is past by the time a
    // connection is free: here, at once.
    let mut late = email(1, "late@example.co.ke");
    late.not_after = Some(tokio::time::Instant::now());
    let mut on_time = email(2, "ok@example.co.ke");
    on_time.not_after = Some(tokio::time::Instant::now() + std::time::Duration::from_secs(3600));
    let results = mail.send(&[late, on_time]).await;
    assert!(matches!(results[0], Err(SendError::TooLate)), "{results:?}");
    assert!(results[1].is_ok(), "{results:?}");
    let to: Vec<String> = peer
        .received()
        .iter()
        .map(|r| r["to"][0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(to, ["ok@example.co.ke"]);
}

#[tokio::test]
#[ignore = "needs aiosmtpd: pip install -r tests/peers/requirements.txt; run with -- --include-ignored"]
async fn a_4xx_is_retried_and_delivered_and_a_5xx_is_final() {
    let (peer, _) = Peer::start(false);
    let mail = sender(peer.port, "");
    let batch = [
        email(1, "tempfail@example.co.ke"),
        email(2, "reject@example.co.ke"),
        email(3, "ok@example.co.ke"),
    ];
    let results = mail.send(&batch).await;
    assert!(
        matches!(&results[0], Err(SendError::Transient { message, .. }) if message.contains("451")),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], Err(SendError::Permanent { message }) if message.contains("550")),
        "{results:?}"
    );
    assert!(results[2].is_ok(), "{results:?}");
    // The retry of the same delivery goes through, with the same Message-ID.
    let again = mail.send(&batch[..1]).await;
    assert!(again[0].is_ok(), "{again:?}");
    let received = peer.received();
    let to: Vec<&str> = received.iter().map(|r| r["to"][0].as_str().unwrap()).collect();
    assert_eq!(to.iter().filter(|t| **t == "tempfail@example.co.ke").count(), 1);
    assert!(!to.contains(&"reject@example.co.ke"));
    // A refused connection is transient: the next backend, or a later attempt, may succeed.
    drop(peer);
    let results = mail.send(&[email(4, "ok@example.co.ke")]).await;
    assert!(matches!(&results[0], Err(e) if e.fails_over()), "{results:?}");
}

#[tokio::test]
#[ignore = "needs aiosmtpd: pip install -r tests/peers/requirements.txt; run with -- --include-ignored"]
async fn starttls_with_a_private_ca() {
    let (peer, ca) = Peer::start(true);
    let ca = ca.unwrap();
    let config = |ca_line: &str| -> Arc<dyn Sender> {
        let config: SmtpConfig = toml::from_str(&format!(
            "host = \"localhost\"\nport = {}\ntls = \"starttls\"\nfrom = \"notices@example.co.ke\"\n{ca_line}",
            peer.port
        ))
        .unwrap();
        config
            .build("mail", &BuildContext::with_console(std::io::sink()))
            .unwrap()
    };
    let trusted = config(&format!("ca_file = {:?}", ca.display().to_string()));
    let results = trusted.send(&[email(1, "ok@example.co.ke")]).await;
    assert!(results[0].is_ok(), "{results:?}");
    let received = peer.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0]["tls"], true, "sent over the STARTTLS session");
    // Without the CA the certificate is not trusted, and nothing is sent in the clear.
    let untrusted = config("");
    let results = untrusted.send(&[email(2, "ok@example.co.ke")]).await;
    assert!(matches!(&results[0], Err(e) if e.is_transient()), "{results:?}");
    assert_eq!(peer.received().len(), 1);
}

#[tokio::test]
#[ignore = "needs aiosmtpd: pip install -r tests/peers/requirements.txt; run with -- --include-ignored"]
async fn implicit_tls_with_a_private_ca() {
    let (peer, ca) = Peer::start_with(true, true);
    let config: SmtpConfig = toml::from_str(&format!(
        "host = \"localhost\"\nport = {}\ntls = \"tls\"\nfrom = \"notices@example.co.ke\"\nca_file = {:?}",
        peer.port,
        ca.unwrap().display().to_string()
    ))
    .unwrap();
    let mail = config
        .build("mail", &BuildContext::with_console(std::io::sink()))
        .unwrap();
    let results = mail
        .send(&[email(1, "ok@example.co.ke"), email(2, "ok2@example.co.ke")])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let received = peer.received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r["tls"] == true), "{received:?}");
    assert!(mail.check().await.unwrap().contains("encrypted"));
}
