//! `tangazo broadcast` and `tangazo preview` as an operator uses them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cli::{Cli, NOW, add_window};

const EN: &str = "M-PESA: Pay bill and Buy goods are back to normal. Thank you for your patience.";
/// Long enough for two GSM-7 segments (between 161 and 306 septets).
const SW: &str = "M-PESA: Ndugu mteja, huduma za Lipa bili na Nunua bidhaa zimerejea kama kawaida baada ya matengenezo. Tunaomba radhi kwa usumbufu uliojitokeza na tunakushukuru kwa uvumilivu wako.";

/// Writes `n` customers: odd ones read Swahili, every third has an email, every 50th opted
/// out, every 7th cares only about withdraw.
fn customers(cli: &Cli, n: u32) -> PathBuf {
    let path = cli.path("customers.csv");
    let mut text = String::from("kind,name,phone,email,locale,zone,components,channels,opt_out\n");
    for i in 0..n {
        let email = if i % 3 == 0 {
            format!("c{i}@example.co.ke")
        } else {
            String::new()
        };
        let locale = if i % 2 == 1 { "sw" } else { "en" };
        let components = if i % 7 == 0 { "withdraw" } else { "" };
        let opt_out = if i % 50 == 0 { "true" } else { "" };
        text.push_str(&format!(
            "customer,C {i},07{:08},{email},{locale},,{components},,{opt_out}\n",
            10_000_000 + i
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn deliveries(cli: &Cli) -> i64 {
    let summary = json(&cli.ok(&["deliveries", "summary", "--json"]));
    summary["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].as_i64().unwrap())
        .sum()
}

#[test]
fn a_dry_run_over_100000_customers_counts_right_and_records_nothing() {
    let cli = Cli::new();
    let n = 100_000u32;
    let csv = customers(&cli, n);
    cli.ok(&["recipients", "import", csv.to_str().unwrap()]);
    let out = cli.ok(&[
        "broadcast",
        NOW,
        "--dry-run",
        "--json",
        "--message",
        EN,
        "--message-sw",
        SW,
        "--component",
        "pay-bill",
        "--audience",
        "customers",
    ]);
    let report = json(&out);

    // The same audience computed independently from the generation rules.
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut recipients = 0;
    for i in 0..n {
        if i % 50 == 0 || i % 7 == 0 {
            continue;
        }
        recipients += 1;
        let locale = if i % 2 == 1 { "sw" } else { "en" };
        *expected.entry(("sms".into(), locale.into())).or_default() += 1;
        if i % 3 == 0 {
            *expected.entry(("email".into(), locale.into())).or_default() += 1;
        }
    }
    let segments = |text: &str| sms_splitter::SplitSms::default().split(String::from(text)).parts.len() as u64;
    assert_eq!((segments(EN), segments(SW)), (1, 2), "the fixture texts");
    let expected_segments = expected[&("sms".to_string(), "en".to_string())] * segments(EN)
        + expected[&("sms".to_string(), "sw".to_string())] * segments(SW);

    assert_eq!(report["recipients"], recipients);
    assert_eq!(report["messages"], expected.values().sum::<u64>());
    assert_eq!(report["sms_segments"], expected_segments);
    let lines: BTreeMap<(String, String), u64> = report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                (
                    l["channel"].as_str().unwrap().into(),
                    l["locale"].as_str().unwrap().into(),
                ),
                l["messages"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(lines, expected);
    let cost = report["cost"]["total"].as_f64().unwrap();
    assert!((cost - expected_segments as f64 * 0.8).abs() < 0.01, "{cost}");
    assert_eq!(report["samples"]["sw"]["sms"]["body"], SW);
    assert_eq!(report["samples"]["sw"]["sms"]["segments"], 2);
    // Nothing recorded, nothing sent.
    assert_eq!(deliveries(&cli), 0);
    assert_eq!(cli.outbox_lines(), 0);
}

fn small_audience(cli: &Cli) {
    let csv = customers(cli, 40);
    cli.ok(&["recipients", "import", csv.to_str().unwrap()]);
}

/// A free message to the 20 Swahili readers by SMS.
const SWAHILI_SMS: [&str; 11] = [
    "broadcast",
    NOW,
    "--message",
    EN,
    "--message-sw",
    SW,
    "--locale",
    "sw",
    "--channel",
    "sms",
    "--json",
];

#[test]
fn a_free_message_goes_once_per_recipient_and_channel_until_the_name_changes() {
    a_free_message_goes_once_per_recipient_and_channel(&Cli::new());
}

/// On PostgreSQL a broadcast alone writes the rows it can send at once claimed for its own
/// lanes; beside another process it writes them pending, for either to claim. Either way each
/// goes out once.
#[tokio::test]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn a_free_message_goes_once_per_recipient_and_channel_on_postgres_alone_or_not() {
    let db = crate::helpers::TestDb::postgres().await;
    let url = db.url.clone();
    let cli = tokio::task::spawn_blocking(move || {
        let cli = Cli::with_database(&url);
        a_free_message_goes_once_per_recipient_and_channel(&cli);
        cli
    })
    .await
    .unwrap();
    db.store
        .beat("daemon@elsewhere", std::time::Duration::from_secs(300), 0, 0.0)
        .await
        .unwrap();
    assert!(
        !db.store.hands_over("broadcast:0").await.unwrap(),
        "another process sends"
    );
    let (cli, beside) = tokio::task::spawn_blocking(move || {
        let beside = json(&cli.ok(&[&SWAHILI_SMS[..], &["--name", "beside-a-daemon"]].concat()));
        (cli, beside)
    })
    .await
    .unwrap();
    assert_eq!(beside["this_run"]["sent"], 20);
    assert_eq!(beside["this_run"]["handed"], 0, "claimed from the queue");
    assert_eq!(beside["states"], serde_json::json!({"sent": 20}));
    assert_eq!(cli.outbox_lines(), 60);
    db.finish().await;
}

/// On PostgreSQL a broadcast writes two pages at once while it reads the next two and hands
/// the two before to its lanes: over an odd number of pages, each recipient still gets it
/// once, and every row is handed.
#[tokio::test]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn a_broadcast_over_several_pages_on_postgres_sends_each_once() {
    let db = crate::helpers::TestDb::postgres().await;
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let cli = Cli::with_database(&url);
        let n = 2 * tangazo::storage::PAGE as u32 + 7;
        let csv = customers(&cli, n);
        cli.ok(&["recipients", "import", csv.to_str().unwrap()]);
        let out = json(&cli.ok(&["broadcast", NOW, "--message", EN, "--channel", "sms", "--yes", "--json"]));
        let reachable = (0..n).filter(|i| i % 50 != 0).count();
        assert_eq!(out["enqueued"], reachable, "{out}");
        assert_eq!(out["this_run"]["sent"], reachable, "{out}");
        assert_eq!(out["this_run"]["handed"], reachable, "{out}");
        assert_eq!(out["states"], serde_json::json!({ "sent": reachable }));
        let sms = std::fs::read_to_string(cli.path("outbox/sms.jsonl")).unwrap();
        let mut phones: Vec<String> = sms
            .lines()
            .map(|l| json(l)["to"].as_str().unwrap().to_owned())
            .collect();
        phones.sort();
        phones.dedup();
        assert_eq!(phones.len(), reachable, "each reachable customer once");
        assert_eq!(cli.outbox_lines(), reachable);
    })
    .await
    .unwrap();
    db.finish().await;
}

/// Paced, on the real clock, a broadcast alone on PostgreSQL records one page at a time: a
/// page written claimed does not wait behind pages written ahead of the lanes, so a run that
/// outlasts its three-second lease still hands every row, none lapsing on the way.
#[tokio::test]
#[ignore = "needs TANGAZO_TEST_POSTGRES; run with -- --include-ignored"]
async fn a_paced_broadcast_on_postgres_outlasting_its_lease_hands_every_row() {
    let db = crate::helpers::TestDb::postgres().await;
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let cli = Cli::with_database(&url);
        std::fs::write(
            cli.path("tangazo.toml"),
            "[senders.outbox]\ntype = \"file\"\ndir = \"outbox\"\nrate = 4000.0\n[dispatch]\nlease = \"3s\"\n",
        )
        .unwrap();
        let n = 4 * tangazo::storage::PAGE as u32 + 7;
        let csv = customers(&cli, n);
        cli.ok(&["recipients", "import", csv.to_str().unwrap()]);
        let args = ["broadcast", NOW, "--message", EN, "--channel", "sms", "--yes", "--json"];
        let out = json(&cli.ok(&args));
        let reachable = (0..n).filter(|i| i % 50 != 0).count();
        assert!(out["dispatch_seconds"].as_f64().unwrap() > 3.0, "{out}");
        assert_eq!(out["this_run"]["handed"], reachable, "{out}");
        assert_eq!(out["this_run"]["possibly_duplicate"], 0, "{out}");
        assert_eq!(out["states"], serde_json::json!({ "sent": reachable }));
    })
    .await
    .unwrap();
    db.finish().await;
}

fn a_free_message_goes_once_per_recipient_and_channel(cli: &Cli) {
    small_audience(cli);
    let args = SWAHILI_SMS;
    let first = json(&cli.ok(&args));
    // Swahili readers, not opted out (0 is English anyway), sms only: the 20 odd ones.
    assert_eq!(first["states"]["sent"], 20);
    assert_eq!(
        first["this_run"]["handed"], 20,
        "alone, it hands its rows to its own lanes"
    );
    let sms = std::fs::read_to_string(cli.path("outbox/sms.jsonl")).unwrap();
    let bodies: Vec<serde_json::Value> = sms.lines().map(json).collect();
    assert_eq!(bodies.len(), 20);
    assert!(
        bodies
            .iter()
            .all(|m| m["body"] == SW && m["kind"] == "message" && m["segments"] == 2)
    );
    let mut keys: Vec<&str> = bodies.iter().map(|m| m["idempotency_key"].as_str().unwrap()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 20, "once per recipient and channel");

    let again = json(&cli.ok(&args));
    assert_eq!(again["this_run"]["sent"], 0);
    assert_eq!(cli.outbox_lines(), 20, "the same command sends nothing twice");

    let mut renamed: Vec<&str> = args.to_vec();
    renamed.extend(["--name", "pay-bill-back-2"]);
    let third = json(&cli.ok(&renamed));
    assert_eq!(third["this_run"]["sent"], 20);
    assert_eq!(cli.outbox_lines(), 40, "a different --name sends again");

    // The same name for a different message is refused, naming the flag.
    let err = cli.bad(&[
        "broadcast",
        NOW,
        "--message",
        "Something else",
        "--name",
        "pay-bill-back-2",
    ]);
    assert!(err.contains("--name") && err.contains("already recorded"), "{err}");
}

#[test]
fn large_audiences_need_yes_and_nothing_is_recorded_without_it() {
    let cli = Cli::new();
    small_audience(&cli);
    let mut cmd = cli.command(&["broadcast", NOW, "--message", EN]);
    cmd.env("TANGAZO_BROADCAST__CONFIRM_ABOVE", "10")
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--yes") && err.contains("nothing was recorded"), "{err}");
    assert_eq!(deliveries(&cli), 0);
    assert_eq!(cli.outbox_lines(), 0);

    let mut cmd = cli.command(&["broadcast", NOW, "--message", EN, "--yes"]);
    cmd.env("TANGAZO_BROADCAST__CONFIRM_ABOVE", "10")
        .stdin(std::process::Stdio::null());
    assert!(cmd.output().unwrap().status.success());
    assert!(deliveries(&cli) > 10);
}

/// With --yes the count asks nothing, so it is taken beside the recording: the audience is
/// still told, in the text as in the JSON, and an empty one still sends nothing.
#[test]
fn with_yes_the_audience_is_counted_beside_the_recording_and_still_told() {
    let cli = Cli::new();
    small_audience(&cli);
    let text = cli.ok(&[&SWAHILI_SMS[..SWAHILI_SMS.len() - 1], &["--yes"]].concat());
    assert!(text.contains("): 20 recipients, 20 messages"), "{text}");
    assert!(text.contains(": sent 20 (this run sent 20)"), "{text}");

    let renamed = json(&cli.ok(&[&SWAHILI_SMS[..], &["--yes", "--name", "again"]].concat()));
    assert_eq!(
        (
            &renamed["recipients"],
            &renamed["messages"],
            &renamed["this_run"]["sent"]
        ),
        (&serde_json::json!(20), &serde_json::json!(20), &serde_json::json!(20))
    );
    let asked = json(&cli.ok(&[&SWAHILI_SMS[..], &["--name", "asked"]].concat()));
    assert_eq!(
        (&asked["recipients"], &asked["messages"]),
        (&renamed["recipients"], &renamed["messages"])
    );

    // Nobody reads Swahili among the billers.
    let none = [
        &SWAHILI_SMS[..SWAHILI_SMS.len() - 1],
        &["--audience", "billers", "--yes"],
    ]
    .concat();
    let text = cli.ok(&none);
    assert!(
        text.contains("no recipient matches this audience: nothing to send"),
        "{text}"
    );
    assert_eq!(cli.outbox_lines(), 60);
}

#[test]
fn a_canary_goes_to_the_seed_list_only_until_released() {
    let cli = Cli::new();
    small_audience(&cli);
    let seeds = cli.path("seeds.csv");
    std::fs::write(
        &seeds,
        "kind,name,phone,email\ncustomer,Ops phone,0799111222,\ncustomer,Ops mailbox,,noc@tangazo.example.co.ke\n",
    )
    .unwrap();
    let args = ["broadcast", NOW, "--message", EN, "--channel", "sms,email"];
    let mut with_canary: Vec<&str> = args.to_vec();
    with_canary.extend(["--canary", seeds.to_str().unwrap()]);
    let out = cli
        .command(&with_canary)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("canary: 2 sent, 0 failed") && stdout.contains("nothing was sent to the audience"),
        "{stdout}"
    );
    let to: Vec<String> = ["sms", "email"]
        .iter()
        .flat_map(|c| {
            std::fs::read_to_string(cli.path(&format!("outbox/{c}.jsonl")))
                .unwrap_or_default()
                .lines()
                .map(|l| json(l)["to"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(to, ["+254799111222", "noc@tangazo.example.co.ke"], "only the seeds");
    // Seeds never join an audience: not in listings, not in window notices.
    let listed = json(&cli.ok(&["recipients", "list", "--json", "--limit", "100"]));
    assert_eq!(listed.as_array().unwrap().len(), 40);

    // Released: the same broadcast without --canary goes to the audience, seeds not twice.
    let released = json(&cli.ok(&[&args[..], &["--json"]].concat()));
    let expected_audience = 39 + 13; // 39 reachable SMS, 13 reachable emails (every third of 40, minus opted-out 0)
    assert_eq!(released["this_run"]["sent"], expected_audience);
    assert_eq!(cli.outbox_lines(), 2 + expected_audience);

    // --canary-wait releases by itself when no canary message failed.
    let waited = cli.ok(&[
        "broadcast",
        NOW,
        "--message",
        "Second notice",
        "--channel",
        "sms",
        "--canary",
        seeds.to_str().unwrap(),
        "--canary-wait",
        "1s",
    ]);
    assert!(waited.contains("releasing to"), "{waited}");
    assert!(waited.contains("sent 40"), "{waited}");
}

#[test]
fn a_window_notice_can_be_broadcast_and_previewed() {
    let cli = Cli::new();
    small_audience(&cli);
    let id = add_window(&cli);
    let preview = cli.ok(&[
        "preview",
        NOW,
        "--window",
        &id,
        "--notice",
        "reminder:24h",
        "--locale",
        "sw",
    ]);
    assert!(
        preview.contains("baada ya saa 24") && preview.contains("GSM-7"),
        "{preview}"
    );
    let preview = json(&cli.ok(&[
        "preview",
        NOW,
        "--window",
        &id,
        "--notice",
        "announced",
        "--recipient",
        "0710000001",
        "--json",
    ]));
    assert!(
        preview["body"].as_str().unwrap().contains("Jumamosi"),
        "recipient 1 reads Swahili: {preview}"
    );
    // A preview may look ahead: the all-clear can be read before the window starts.
    assert!(
        cli.ok(&["preview", NOW, "--window", &id, "--notice", "completed"])
            .contains("M-PESA:")
    );
    let out = json(&cli.ok(&[
        "broadcast",
        NOW,
        "--window",
        &id,
        "--notice",
        "announced",
        "--channel",
        "email",
        "--json",
    ]));
    assert_eq!(
        out["this_run"]["sent"],
        13 - 1 + 1,
        "emails of the reachable who care about send-money or withdraw"
    );
    let err = cli.bad(&["broadcast", NOW, "--window", &id, "--notice", "completed"]);
    assert!(err.contains("--notice") && err.contains("does not fit"), "{err}");
}

#[test]
fn ctrl_c_stops_claiming_and_a_rerun_finishes_without_duplicates() {
    let cli = Cli::new();
    small_audience(&cli);
    // Five messages a batch at five a second: the broadcast takes about eight seconds.
    std::fs::write(
        cli.path("tangazo.toml"),
        "[senders.outbox]\ntype = \"file\"\ndir = \"outbox\"\nrate = 5.0\n[dispatch]\nbatch_size = 5\n",
    )
    .unwrap();
    let args = ["broadcast", NOW, "--message", EN, "--channel", "sms"];
    let child = cli
        .command(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop it once the first batch is out, while the rest wait for the pace.
    crate::helpers::wait_until("the first batch in the outbox", || cli.outbox_lines() > 0);
    std::process::Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stay queued"), "{stderr}");
    let sent = cli.outbox_lines();
    assert!(sent > 0 && sent < 39, "{sent} sent before the stop");

    let rest = json(&cli.ok(&[&args[..], &["--json"]].concat()));
    assert_eq!(rest["this_run"]["sent"].as_u64().unwrap() as usize, 39 - sent);
    let sms = std::fs::read_to_string(cli.path("outbox/sms.jsonl")).unwrap();
    let mut keys: Vec<String> = sms
        .lines()
        .map(|l| json(l)["idempotency_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 39, "every reachable customer once");
}

/// Runs a broadcast on a pseudo-terminal (util-linux `script`), answering `answer` to its
/// question. Returns the exit code and what the terminal showed.
fn on_a_terminal(cli: &Cli, args: &[&str], answer: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_tangazo"))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &quoted.join(" "), "/dev/null"])
        .current_dir(cli.dir.path());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TANGAZO_")) {
        cmd.env_remove(k);
    }
    cmd.env("TANGAZO_BROADCAST__CONFIRM_ABOVE", "10");
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn on_a_terminal_a_large_audience_is_asked_about() {
    let cli = Cli::new();
    small_audience(&cli);
    let (code, screen) = on_a_terminal(&cli, &["broadcast", NOW, "--message", EN], "n\n");
    assert!(
        screen.contains("send to 39 recipients") && screen.contains("[y/N]"),
        "{screen}"
    );
    assert_eq!(code, Some(2), "{screen}");
    assert_eq!(deliveries(&cli), 0, "declined: nothing recorded");
    let (code, screen) = on_a_terminal(&cli, &["broadcast", NOW, "--message", EN], "y\n");
    assert_eq!(code, Some(0), "{screen}");
    assert_eq!(deliveries(&cli), 39 + 13);
    assert_eq!(cli.outbox_lines(), 39 + 13);

    // A canary asks before the release; the large-audience question comes first.
    let seeds = cli.path("seeds.csv");
    std::fs::write(&seeds, "kind,name,phone\ncustomer,Ops phone,0799111222\n").unwrap();
    let args = [
        "broadcast",
        NOW,
        "--message",
        "Second",
        "--channel",
        "sms",
        "--canary",
        seeds.to_str().unwrap(),
    ];
    let (code, screen) = on_a_terminal(&cli, &args, "y\nn\n");
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("release to 39 recipients? [y/N]"), "{screen}");
    assert_eq!(cli.outbox_lines(), 39 + 13 + 1, "declined: the seed only");
    let (code, screen) = on_a_terminal(&cli, &args, "y\ny\n");
    assert_eq!(code, Some(0), "{screen}");
    assert_eq!(cli.outbox_lines(), 39 + 13 + 1 + 39, "released, the seed not twice");
}

#[test]
fn a_message_file_carries_each_locale_and_its_subject() {
    let cli = Cli::new();
    small_audience(&cli);
    let file = cli.path("message.toml");
    std::fs::write(
        &file,
        format!("[en]\ntext = \"{EN}\"\nsubject = \"Pay bill is back\"\n\n[sw]\ntext = \"{SW}\"\nsubject = \"Lipa bili imerejea\"\n"),
    )
    .unwrap();
    let out = json(&cli.ok(&[
        "broadcast",
        NOW,
        "--message-file",
        file.to_str().unwrap(),
        "--dry-run",
        "--json",
    ]));
    assert_eq!(out["samples"]["en"]["sms"]["body"], EN);
    assert_eq!(out["samples"]["sw"]["sms"]["body"], SW);
    assert_eq!(out["samples"]["sw"]["email_subject"], "Lipa bili imerejea");
    cli.ok(&[
        "broadcast",
        NOW,
        "--message-file",
        file.to_str().unwrap(),
        "--channel",
        "email",
    ]);
    let emails: Vec<serde_json::Value> = std::fs::read_to_string(cli.path("outbox/email.jsonl"))
        .unwrap()
        .lines()
        .map(json)
        .collect();
    assert_eq!(emails.len(), 13);
    assert!(emails.iter().all(|m| m["subject"]
        == if m["locale"] == "sw" {
            "Lipa bili imerejea"
        } else {
            "Pay bill is back"
        }));

    std::fs::write(&file, "[en]\ntext = \"\"\n").unwrap();
    assert!(
        cli.bad(&["broadcast", NOW, "--message-file", file.to_str().unwrap()])
            .contains("en text is empty")
    );
    std::fs::write(&file, "[fr]\ntext = \"Bonjour\"\n").unwrap();
    assert!(
        cli.bad(&["broadcast", NOW, "--message-file", file.to_str().unwrap()])
            .contains("message.toml")
    );
    let long = "x".repeat(400);
    assert!(cli.bad(&["broadcast", NOW, "--message", &long]).contains("3 segments"));
}

/// Every announcement line in the outbox, as (channel, address).
fn announced_lines(cli: &Cli) -> Vec<(String, String)> {
    ["sms", "email", "webhook"]
        .iter()
        .flat_map(|c| {
            std::fs::read_to_string(cli.path(&format!("outbox/{c}.jsonl")))
                .unwrap_or_default()
                .lines()
                .map(json)
                .filter(|l| l["notice"] == "announced")
                .map(|l| {
                    (
                        l["channel"].as_str().unwrap().to_owned(),
                        l["to"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_window_notice_is_told_once_whichever_path_told_it() {
    for broadcast_first in [true, false] {
        let cli = Cli::new();
        small_audience(&cli);
        let id = add_window(&cli);
        let broadcast = ["broadcast", NOW, "--window", &id, "--notice", "announced", "--json"];
        if broadcast_first {
            cli.ok(&broadcast);
            assert!(!announced_lines(&cli).is_empty());
            cli.ok(&["run-once", NOW]);
        } else {
            cli.ok(&["run-once", NOW]);
            let report = json(&cli.ok(&broadcast));
            assert_eq!(report["this_run"]["sent"], 0, "the scheduler told them all already");
        }
        let lines = announced_lines(&cli);
        let mut unique = lines.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            lines.len(),
            unique.len(),
            "an announcement went twice to someone (broadcast first: {broadcast_first})"
        );
        assert!(lines.len() >= 40, "everyone was told once: {}", lines.len());
    }
}
