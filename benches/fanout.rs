//! The fan-out benchmark: how fast the `tangazo` binary imports recipients, plans one notice
//! for all of them into the delivery ledger and hands it to each kind of sender backend, how
//! late each message arrives against its slot, and how much memory Tangazo takes doing it.
//!
//! ```sh
//! cargo bench --bench fanout -- --recipients 100000 --stores sqlite,postgres \
//!     --channels file,at,twilio,smtp,webhook,broadcast --output target/bench.json
//! cargo bench --bench fanout -- --smoke      # 500 recipients, every channel: the counts only
//! cargo bench --bench fanout -- --recipients 1000000 --channels file --rate 30000   # paced
//! ```
//!
//! Tangazo runs as a separate process (the release binary cargo builds beside this harness),
//! so the peak RSS is its own; the peers it sends to (fakes of Africa's Talking and Twilio, an
//! SMTP server, a webhook receiver) run in this process on loopback ports. For each store and
//! channel the harness makes a fresh database and working folder, writes a configuration
//! routing the channel to its backend without a rate limit, then times
//! `tangazo recipients import`, creates a window whose announcement is due now (and nothing
//! else), and times `tangazo run-once`, polling `/proc/PID/status` for its peak RSS. Every
//! delivery must be sent and must have arrived exactly once; anything else fails the run.
//! With `--rate R` the backend is paced at R per second instead, and `tangazo daemon` runs until
//! everything is sent: lateness is then measured against each delivery's own paced slot.

// A command-line program: progress goes to stderr, the table to stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "fanout/ledger.rs"]
mod ledger;
#[path = "fanout/sinks.rs"]
mod sinks;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use clap::{Parser, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use ledger::Db;
use sinks::{Arrival, Sinks};

/// Measures the `tangazo` binary importing recipients, planning a notice for all of them and
/// sending it through each backend to local peers.
#[derive(Debug, Parser)]
#[command(name = "fanout", max_term_width = 100)]
struct Args {
    /// Recipients per run
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    recipients: usize,
    /// Stores to measure, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    stores: Vec<StoreKind>,
    /// Channel scenarios to measure, comma-separated: file (SMS to the file outbox), at (SMS to
    /// Africa's Talking), twilio (SMS to Twilio), smtp (email), webhook (billers' endpoints),
    /// broadcast (a free-text `tangazo broadcast` to every customer, SMS to the file outbox)
    #[arg(long, value_delimiter = ',', default_value = "file,at,twilio,smtp,webhook,broadcast")]
    channels: Vec<Scenario>,
    /// Billers (one webhook endpoint each) in the webhook scenario [default: the lesser of
    /// --recipients and 10000]
    #[arg(long, value_name = "N")]
    webhook_billers: Option<usize>,
    /// Where PostgreSQL databases are created and dropped
    #[arg(long, value_name = "URL", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_admin: String,
    /// Also write the results, the machine and the commit as JSON here
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Keep the working folders (and PostgreSQL databases) for inspection
    #[arg(long)]
    keep: bool,
    /// A quick check for CI: 500 recipients, every channel; proves the harness runs and the
    /// counts agree, claims no numbers
    #[arg(long)]
    smoke: bool,
    /// Paces the backend at R deliveries per second (its `rate`, burst R/10) and runs
    /// `tangazo daemon` until everything is sent, rather than one `run-once`: every delivery
    /// gets its own slot, and lateness is measured against it. Not for `broadcast`
    #[arg(long, value_name = "R")]
    rate: Option<u32>,
    /// Plans and sends apart, to measure each alone: the window is paused before a first
    /// `run-once`, which plans its fan-out and sends nothing (a paused window's rows are
    /// written held), then resumed for a second, which sends it all through claims. Not for
    /// `broadcast` or with --rate
    #[arg(long)]
    apart: bool,
    /// The dispatcher's `batch_size` [default: Tangazo's own]
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// The dispatcher's `batches_in_flight`, the lanes claiming and sending at once [default:
    /// Tangazo's own]
    #[arg(long, value_name = "N")]
    lanes: Option<usize>,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    File,
    At,
    Twilio,
    Smtp,
    Webhook,
    /// A free-text `tangazo broadcast` to every customer, SMS to the file outbox.
    Broadcast,
}

/// Who a scenario's recipients are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum People {
    /// Customers with a phone only.
    Phones,
    /// Customers with an email address only.
    Mailboxes,
    /// Billers that hear by webhook only.
    Billers,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::File => "file",
            Scenario::At => "at",
            Scenario::Twilio => "twilio",
            Scenario::Smtp => "smtp",
            Scenario::Webhook => "webhook",
            Scenario::Broadcast => "broadcast",
        }
    }

    /// The ledger's channel.
    fn channel(self) -> &'static str {
        match self {
            Scenario::File | Scenario::At | Scenario::Twilio | Scenario::Broadcast => "sms",
            Scenario::Smtp => "email",
            Scenario::Webhook => "webhook",
        }
    }

    fn people(self) -> People {
        match self {
            Scenario::File | Scenario::At | Scenario::Twilio | Scenario::Broadcast => People::Phones,
            Scenario::Smtp => People::Mailboxes,
            Scenario::Webhook => People::Billers,
        }
    }

    /// The `[senders.bench]` table routing this scenario's channel, without a `rate`, so the
    /// backend never waits and Tangazo's own speed is measured. SMTP gets 32 connections, as a
    /// relay that takes them would be configured (the default is 4).
    fn sender(self, sinks: &Sinks) -> String {
        match self {
            Scenario::File | Scenario::Broadcast => "type = \"file\"\ndir = \"outbox\"\n".to_owned(),
            Scenario::At => format!(
                "type = \"africastalking\"\nbase_url = \"{}\"\nusername = \"bench\"\napi_key = \"bench-api-key\"\nfrom = \"MPESA\"\n",
                sinks.africastalking.base_url()
            ),
            Scenario::Twilio => format!(
                "type = \"twilio\"\nbase_url = \"{}\"\naccount_sid = \"AC00000000000000000000000000000000\"\nauth_token = \"bench-auth-token\"\nfrom = \"MPESA\"\n",
                sinks.twilio.base_url()
            ),
            Scenario::Smtp => format!(
                "type = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"notices@example.co.ke\"\nfrom_name = \"M-PESA\"\nhello_name = \"tangazo.bench\"\nconnections = 32\n",
                sinks.smtp.addr.port()
            ),
            Scenario::Webhook => "type = \"webhook\"\nallow_http = true\nallow = [\"127.0.0.1\"]\n".to_owned(),
        }
    }
}

/// One store × channel run.
#[derive(Debug, Serialize)]
struct Outcome {
    store: StoreKind,
    scenario: Scenario,
    channel: &'static str,
    recipients: u64,
    import_seconds: f64,
    import_per_second: f64,
    import_peak_rss_mib: f64,
    enqueued: u64,
    plan_seconds: f64,
    plan_per_second: f64,
    sent: u64,
    dispatch_seconds: f64,
    dispatch_per_second: f64,
    run_once_seconds: f64,
    run_once_per_second: f64,
    lateness_ms: Lateness,
    peak_rss_mib: f64,
    /// Requests the sink answered (Africa's Talking carries many recipients in one).
    sink_requests: u64,
    /// Messages the sink received (for the file outbox: its lines).
    sink_messages: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Lateness {
    p50: i64,
    p99: i64,
    max: i64,
}

#[derive(Debug, Serialize)]
struct Failure {
    store: StoreKind,
    scenario: Scenario,
    error: String,
}

/// Writes a progress line on stderr with the time since the harness started.
macro_rules! note {
    ($started:expr, $($arg:tt)*) => {
        eprintln!("[{:>7.1} s] {}", $started.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fanout: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What every run shares.
struct Bench {
    started: Instant,
    binary: PathBuf,
    work: PathBuf,
    sinks: Sinks,
    postgres_admin: String,
    keep: bool,
    recipients: usize,
    billers: usize,
    /// Generated recipient files, by who is in them.
    files: HashMap<People, PathBuf>,
    databases: usize,
    /// The backend's rate in a paced run.
    rate: Option<u32>,
    /// Planning and sending measured apart (`--apart`).
    apart: bool,
    /// The `[dispatch]` settings given on the command line.
    dispatch: Dispatch,
}

/// `[dispatch]` settings of every run; `None` leaves Tangazo's default.
#[derive(Debug, Clone, Copy, Serialize)]
struct Dispatch {
    batch_size: Option<usize>,
    lanes: Option<usize>,
}

impl Args {
    fn dispatch(&self) -> Dispatch {
        Dispatch {
            batch_size: self.batch_size,
            lanes: self.lanes,
        }
    }
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.smoke {
        args.recipients = 500;
        args.webhook_billers = None;
        args.channels = Scenario::value_variants()
            .iter()
            .copied()
            .filter(|s| (args.rate.is_none() && !args.apart) || *s != Scenario::Broadcast)
            .collect();
    }
    ensure!(args.recipients > 0, "--recipients must be at least 1");
    ensure!(args.rate != Some(0), "--rate must be at least 1");
    ensure!(args.batch_size != Some(0), "--batch-size must be at least 1");
    ensure!(
        args.lanes.is_none_or(|n| (1..=64).contains(&n)),
        "--lanes must be between 1 and 64"
    );
    ensure!(
        args.rate.is_none() || !args.channels.contains(&Scenario::Broadcast),
        "--rate paces a window's notice through the daemon; leave broadcast out of --channels"
    );
    ensure!(
        !args.apart || (args.rate.is_none() && !args.channels.contains(&Scenario::Broadcast)),
        "--apart pauses a window's notice for one run-once; leave --rate and broadcast out"
    );
    args.stores.dedup();
    args.channels.dedup();
    let billers = args.webhook_billers.unwrap_or(args.recipients.min(10_000));
    ensure!(
        billers > 0 || !args.channels.contains(&Scenario::Webhook),
        "--webhook-billers must be at least 1"
    );
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tangazo"));
    ensure!(
        binary.is_file(),
        "the tangazo binary is missing at {} (build it with cargo bench)",
        binary.display()
    );
    if args.stores.contains(&StoreKind::Postgres) {
        ledger::check_postgres(&args.postgres_admin).await.with_context(|| {
            format!(
                "PostgreSQL at {} is unreachable: start it, name another server with --postgres-admin URL, \
                 or measure SQLite alone with --stores sqlite",
                args.postgres_admin
            )
        })?;
    }
    let work = tempfile::Builder::new()
        .prefix("tangazo-bench-")
        .tempdir()
        .context("creating the working folder")?;
    let sinks = sinks::start().await?;
    note!(
        started,
        "tangazo {}; working in {}; sinks: Africa's Talking {}, Twilio {}, SMTP {}, webhooks {}",
        binary.display(),
        work.path().display(),
        sinks.africastalking.addr,
        sinks.twilio.addr,
        sinks.smtp.addr,
        sinks.webhook.addr
    );
    let mut bench = Bench {
        started,
        binary,
        work: work.path().to_owned(),
        sinks,
        postgres_admin: args.postgres_admin.clone(),
        keep: args.keep,
        recipients: args.recipients,
        billers,
        files: HashMap::new(),
        databases: 0,
        rate: args.rate,
        apart: args.apart,
        dispatch: args.dispatch(),
    };
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for &store in &args.stores {
        for &scenario in &args.channels {
            let label = format!("{}/{}", store.name(), scenario.name());
            match bench.measure(store, scenario).await {
                Ok(outcome) => {
                    note!(
                        started,
                        "{label}: done: {} sent in {:.2} s",
                        outcome.sent,
                        outcome.run_once_seconds
                    );
                    outcomes.push(outcome);
                }
                Err(e) => {
                    note!(started, "{label}: FAILED: {e:#}");
                    failures.push(Failure {
                        store,
                        scenario,
                        error: format!("{e:#}"),
                    });
                }
            }
        }
    }
    print_table(&outcomes, args.smoke);
    if let Some(path) = &args.output {
        write_json(path, &args, billers, &outcomes, &failures)?;
        note!(started, "results written to {}", path.display());
    }
    // A failed run's folder has the logs its error points to.
    if args.keep || !failures.is_empty() {
        let kept = work.keep();
        note!(started, "working folders kept in {}", kept.display());
    }
    if !failures.is_empty() {
        let list: Vec<String> = failures
            .iter()
            .map(|f| format!("{}/{}: {}", f.store.name(), f.scenario.name(), f.error))
            .collect();
        bail!(
            "{} of {} runs failed:\n  {}",
            failures.len(),
            failures.len() + outcomes.len(),
            list.join("\n  ")
        );
    }
    Ok(())
}

impl Bench {
    /// One run, with its PostgreSQL database dropped afterwards whatever happened.
    async fn measure(&mut self, store: StoreKind, scenario: Scenario) -> anyhow::Result<Outcome> {
        let dir = self.work.join(format!("{}-{}", store.name(), scenario.name()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        match store {
            StoreKind::Sqlite => {
                let url = format!("sqlite://{}", dir.join("tangazo.db").display());
                self.measure_on(store, scenario, &dir, &url).await
            }
            StoreKind::Postgres => {
                self.databases += 1;
                let name = format!("tangazo_bench_{}_{}", std::process::id(), self.databases);
                let url = ledger::create_database(&self.postgres_admin, &name).await?;
                let outcome = self.measure_on(store, scenario, &dir, &url).await;
                if self.keep {
                    note!(self.started, "kept database {url}");
                } else if let Err(e) = ledger::drop_database(&self.postgres_admin, &name).await {
                    note!(self.started, "could not drop database {name}: {e:#}");
                }
                outcome
            }
        }
    }

    async fn measure_on(
        &mut self,
        store: StoreKind,
        scenario: Scenario,
        dir: &Path,
        database: &str,
    ) -> anyhow::Result<Outcome> {
        let label = format!("{}/{}", store.name(), scenario.name());
        let config = dir.join("tangazo.toml");
        std::fs::write(&config, configuration(scenario, &self.sinks, self.rate, self.dispatch))
            .with_context(|| format!("writing {}", config.display()))?;
        let people = scenario.people();
        let audience = if people == People::Billers {
            self.billers
        } else {
            self.recipients
        };
        let csv = self.recipients_file(people, audience)?;
        let tangazo = Tangazo {
            binary: &self.binary,
            dir,
            config: &config,
            database,
        };

        note!(self.started, "{label}: importing {audience} recipients");
        let import = tangazo
            .run(
                "import",
                &["recipients", "import", &csv.display().to_string(), "--json"],
            )
            .await?;
        let report: Value = serde_json::from_str(&import.stdout).context("reading the import report")?;
        let imported = count(&report, "/imported");
        ensure!(
            imported == audience as u64 && count(&report, "/rejected") == 0,
            "the import took {imported} of {audience} rows (rejected {}): {}",
            count(&report, "/rejected"),
            report.pointer("/errors").unwrap_or(&Value::Null)
        );
        note!(
            self.started,
            "{label}: imported {imported} in {:.2} s ({:.0}/s)",
            import.seconds,
            imported as f64 / import.seconds
        );

        if people == People::Billers {
            let registering = Instant::now();
            self.register_endpoints(&tangazo).await?;
            note!(
                self.started,
                "{label}: registered {audience} webhook endpoints in {:.2} s",
                registering.elapsed().as_secs_f64()
            );
        }

        self.drain_sinks();
        let (tick, enqueued, sent, plan_seconds, dispatch_seconds) = if scenario == Scenario::Broadcast {
            note!(self.started, "{label}: broadcast");
            let ran = tangazo
                .run(
                    "broadcast",
                    &[
                        "broadcast",
                        "--name",
                        "bench",
                        "--audience",
                        "customers",
                        "--message",
                        "M-PESA is unavailable tonight from 23:00 to 01:00 while the systems move.",
                        "--message-sw",
                        "M-PESA haitapatikana usiku wa leo kuanzia saa 5 hadi saa 7 mifumo ikihamishwa.",
                        "--yes",
                        "--json",
                    ],
                )
                .await?;
            let report: Value = serde_json::from_str(&ran.stdout).context("reading the broadcast report")?;
            let (enqueued, sent) = (count(&report, "/enqueued"), count(&report, "/this_run/sent"));
            let plan = seconds(&report, "/enqueue_seconds")?;
            let dispatch = seconds(&report, "/dispatch_seconds")?;
            (ran, enqueued, sent, plan, dispatch)
        } else if let Some(rate) = self.rate {
            self.paced(&label, &tangazo, scenario, audience as u64, rate).await?
        } else {
            self.tick(&label, &tangazo).await?
        };
        note!(
            self.started,
            "{label}: enqueued {enqueued} in {plan_seconds:.2} s, sent {sent} in {dispatch_seconds:.2} s; \
             the process {:.2} s, peak RSS {:.1} MiB",
            tick.seconds,
            mib(tick.peak_rss_kib)
        );
        ensure!(
            enqueued == audience as u64,
            "{label} enqueued {enqueued} deliveries for {audience} recipients"
        );
        ensure!(
            sent == enqueued,
            "{label} sent {sent} of {enqueued}; see the logs in {}",
            dir.display()
        );

        let (arrivals, requests) = match self.sink(scenario) {
            Some(sink) => {
                let (arrivals, requests) = sink.recorder.drain();
                (Some(arrivals), requests)
            }
            None => {
                let outbox = dir.join("outbox").join("sms.jsonl");
                let lines = std::fs::read_to_string(&outbox)
                    .with_context(|| format!("reading {}", outbox.display()))?
                    .lines()
                    .count();
                (None, lines as u64)
            }
        };
        let db = Db::open(database).await?;
        let rows = db.deliveries().await;
        db.close().await;
        let rows = rows.context("reading the ledger")?;
        let (lateness, messages) = settle(scenario, enqueued, &rows, arrivals.as_deref(), requests)?;

        let n = audience as u64;
        Ok(Outcome {
            store,
            scenario,
            channel: scenario.channel(),
            recipients: n,
            import_seconds: import.seconds,
            import_per_second: imported as f64 / import.seconds,
            import_peak_rss_mib: mib(import.peak_rss_kib),
            enqueued,
            plan_seconds,
            plan_per_second: enqueued as f64 / plan_seconds,
            sent,
            dispatch_seconds,
            dispatch_per_second: sent as f64 / dispatch_seconds,
            run_once_seconds: tick.seconds,
            run_once_per_second: sent as f64 / tick.seconds,
            lateness_ms: lateness,
            peak_rss_mib: mib(tick.peak_rss_kib),
            sink_requests: requests,
            sink_messages: messages,
        })
    }

    /// Creates a window whose announcement is due now and runs one tick: the process, what it
    /// enqueued and sent, and how long planning and dispatch took by its own report.
    async fn tick(&self, label: &str, tangazo: &Tangazo<'_>) -> anyhow::Result<(Ran, u64, u64, f64, f64)> {
        add_window(tangazo).await?;
        if self.apart {
            return self.apart(label, tangazo).await;
        }
        note!(self.started, "{label}: run-once");
        let tick = tangazo.run("run-once", &["run-once", "--json"]).await?;
        let report = tick_report(&tick)?;
        let (enqueued, sent) = (count(&report, "/enqueued"), count(&report, "/dispatch/sent"));
        let plan = seconds(&report, "/plan_seconds")?;
        let dispatch = seconds(&report, "/dispatch_seconds")?;
        Ok((tick, enqueued, sent, plan, dispatch))
    }

    /// `tick` with the window paused for a first `run-once`, which plans, and resumed for a
    /// second, which sends: the two processes as one (their times added, the higher peak), what
    /// the first enqueued and the second sent, and how long each took by its own report.
    async fn apart(&self, label: &str, tangazo: &Tangazo<'_>) -> anyhow::Result<(Ran, u64, u64, f64, f64)> {
        // Each run's database is new: its window is the first.
        let toggle = async |step: &str| -> anyhow::Result<()> {
            let ran = tangazo
                .run(step, &["deliveries", step, "--window", "1", "--json"])
                .await?;
            let report: Value =
                serde_json::from_str(&ran.stdout).with_context(|| format!("reading the {step} report"))?;
            ensure!(
                report.pointer("/changed") == Some(&Value::Bool(true)),
                "{step} changed nothing: {report}"
            );
            Ok(())
        };
        toggle("pause").await?;
        note!(self.started, "{label}: run-once, the window paused: planning alone");
        let planning = tangazo.run("run-once", &["run-once", "--json"]).await?;
        let report = tick_report(&planning)?;
        let (enqueued, unsent) = (count(&report, "/enqueued"), count(&report, "/dispatch/sent"));
        ensure!(unsent == 0, "the paused window's run sent {unsent}");
        let plan = seconds(&report, "/plan_seconds")?;
        toggle("resume").await?;
        note!(self.started, "{label}: run-once, the window resumed: sending alone");
        let sending = tangazo.run("run-once", &["run-once", "--json"]).await?;
        let report = tick_report(&sending)?;
        ensure!(
            count(&report, "/enqueued") == 0,
            "the resumed window's run planned again"
        );
        let sent = count(&report, "/dispatch/sent");
        let dispatch = seconds(&report, "/dispatch_seconds")?;
        let both = Ran {
            stdout: sending.stdout,
            log: planning.log.into_iter().chain(sending.log).collect(),
            seconds: planning.seconds + sending.seconds,
            peak_rss_kib: planning.peak_rss_kib.max(sending.peak_rss_kib),
        };
        Ok((both, enqueued, sent, plan, dispatch))
    }
}

/// A `run-once --json` report, refused if anything was retried, failed or expired.
fn tick_report(tick: &Ran) -> anyhow::Result<Value> {
    let report: Value = serde_json::from_str(&tick.stdout).context("reading the run-once report")?;
    ensure!(
        count(&report, "/dispatch/retried") + count(&report, "/dispatch/failed") + count(&report, "/dispatch/expired")
            == 0,
        "run-once retried {}, failed {}, expired {}",
        count(&report, "/dispatch/retried"),
        count(&report, "/dispatch/failed"),
        count(&report, "/dispatch/expired")
    );
    Ok(report)
}

impl Bench {
    /// Creates a window whose announcement is due now, paced at `rate`, and runs `tangazo
    /// daemon` until the ledger has `expected` deliveries sent (or nothing moved for a minute):
    /// the process, what it enqueued and sent, its planning time by its tick's log line, and
    /// the time from the first slot to the last delivery sent.
    async fn paced(
        &self,
        label: &str,
        tangazo: &Tangazo<'_>,
        scenario: Scenario,
        expected: u64,
        rate: u32,
    ) -> anyhow::Result<(Ran, u64, u64, f64, f64)> {
        add_window(tangazo).await?;
        note!(
            self.started,
            "{label}: daemon, {} at {rate}/s: about {:.0} s",
            scenario.channel(),
            expected as f64 / f64::from(rate)
        );
        let done = tokio_util::sync::CancellationToken::new();
        let watching = {
            let (database, done) = (tangazo.database.to_owned(), done.clone());
            tokio::spawn(async move { watch_sent(&database, expected, &done).await })
        };
        let ran = tangazo.run_until("daemon", &["daemon"], &done).await;
        done.cancel();
        let sent = watching.await??;
        let ran = ran?;
        let plan = ran
            .log
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line.pointer("/fields/message").and_then(Value::as_str) == Some("tick"))
            .find(|line| count(line, "/fields/enqueued") > 0)
            .context("the daemon logged no tick that enqueued anything")?;
        let enqueued = count(&plan, "/fields/enqueued");
        let plan_seconds = plan
            .pointer("/fields/plan_seconds")
            .and_then(Value::as_f64)
            .context("the daemon's tick line has no plan_seconds")?;
        let db = Db::open(tangazo.database).await?;
        let span = db.sending_span().await;
        db.close().await;
        Ok((ran, enqueued, sent, plan_seconds, span?))
    }
}

/// Adds a window starting in six hours. The announcement is due at once; the reminders the
/// policy owes before a start six hours away (72h, 24h, a week for billers) are already past and
/// skipped, and the one an hour before is five hours off: one notice for everyone, nothing else.
/// Its slot (`due_at`) is the window's creation, just before run-once or the daemon starts, so
/// lateness counts from there (in a paced run, from each delivery's own slot after it).
async fn add_window(tangazo: &Tangazo<'_>) -> anyhow::Result<()> {
    {
        let now = chrono::Utc::now();
        let start = (now + chrono::Duration::hours(6)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let end = (now + chrono::Duration::hours(8)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        tangazo
            .run(
                "window",
                &[
                    "window",
                    "add",
                    "--title",
                    "Systems migration",
                    "--title-sw",
                    "Uhamisho wa mifumo",
                    "--description",
                    "Sending money, withdrawals and bill payments are unavailable while the systems move.",
                    "--components",
                    "send-money,withdraw,pay-bill",
                    "--start",
                    &start,
                    "--end",
                    &end,
                ],
            )
            .await?;
    }
    Ok(())
}

/// Counts the deliveries sent every half second until there are `expected` (then cancels
/// `done`), `done` is cancelled otherwise (the daemon ended), or the count has not moved for a
/// minute. Returns the last count.
async fn watch_sent(database: &str, expected: u64, done: &tokio_util::sync::CancellationToken) -> anyhow::Result<u64> {
    let db = Db::open(database).await?;
    let mut last = (0, Instant::now());
    let counted = loop {
        let sent = match db.sent().await {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if sent >= expected || done.is_cancelled() {
            break Ok(sent);
        }
        if sent != last.0 {
            last = (sent, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            break Ok(sent);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = done.cancelled() => {}
        }
    };
    done.cancel();
    db.close().await;
    counted
}

impl Bench {
    /// The sink a scenario sends to (none for the file outbox).
    fn sink(&self, scenario: Scenario) -> Option<&sinks::Sink> {
        match scenario {
            Scenario::File | Scenario::Broadcast => None,
            Scenario::At => Some(&self.sinks.africastalking),
            Scenario::Twilio => Some(&self.sinks.twilio),
            Scenario::Smtp => Some(&self.sinks.smtp),
            Scenario::Webhook => Some(&self.sinks.webhook),
        }
    }

    /// Forgets what the sinks received before this run (nothing, unless a run failed).
    fn drain_sinks(&self) {
        for sink in [
            &self.sinks.africastalking,
            &self.sinks.twilio,
            &self.sinks.smtp,
            &self.sinks.webhook,
        ] {
            sink.recorder.drain();
        }
    }

    /// The recipients CSV for `people`, written once per harness run.
    fn recipients_file(&mut self, people: People, n: usize) -> anyhow::Result<PathBuf> {
        if let Some(path) = self.files.get(&people) {
            return Ok(path.clone());
        }
        let name = match people {
            People::Phones => "customers-sms.csv",
            People::Mailboxes => "customers-email.csv",
            People::Billers => "billers-webhook.csv",
        };
        let path = self.work.join(name);
        write_recipients(&path, people, n).with_context(|| format!("writing {}", path.display()))?;
        self.files.insert(people, path.clone());
        Ok(path)
    }

    /// One endpoint per biller at `/hook/{biller id}` on the webhook sink: the first through
    /// `tangazo webhooks add` (so its URL passes Tangazo's own checks, and its row shows what
    /// registration writes), the rest inserted alike in one transaction.
    async fn register_endpoints(&self, tangazo: &Tangazo<'_>) -> anyhow::Result<()> {
        let db = Db::open(tangazo.database).await?;
        let billers = db.billers().await;
        db.close().await;
        let billers = billers.context("reading the billers")?;
        let Some((first, address)) = billers.first() else {
            bail!("no billers were imported");
        };
        tangazo
            .run(
                "webhooks",
                &[
                    "webhooks",
                    "add",
                    "--biller",
                    address,
                    "--url",
                    &self.sinks.webhook.hook_url(*first),
                ],
            )
            .await?;
        let db = Db::open(tangazo.database).await?;
        let registered = async {
            let shapes = db.endpoints().await?;
            let [like] = shapes.as_slice() else {
                bail!("expected one endpoint after `webhooks add`, found {}", shapes.len());
            };
            let rest = billers
                .iter()
                .skip(1)
                .map(|(id, _)| Ok((*id, self.sinks.webhook.hook_url(*id), signing_secret()?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            db.add_endpoints(&rest, like).await
        }
        .await;
        db.close().await;
        registered.context("registering the webhook endpoints")
    }
}

/// The configuration of one run: the scenario's backend as `bench`, its channel routed to it,
/// every other channel to the file outbox.
fn configuration(scenario: Scenario, sinks: &Sinks, rate: Option<u32>, dispatch: Dispatch) -> String {
    let mut toml = String::from(
        "# Written by benches/fanout.rs for one run. No quiet hours: a run measures throughput at\n\
         # whatever hour it runs, and everyone's notice is due at once.\n\
         [policy.customers]\n\
         quiet_hours = \"off\"\n\n\
         [senders.outbox]\n\
         type = \"file\"\n\
         dir = \"outbox\"\n\n",
    );
    let _ = writeln!(toml, "[senders.bench]\n{}", scenario.sender(sinks));
    if let Some(rate) = rate {
        let _ = writeln!(toml, "rate = {rate}\nburst = {}\n", (rate / 10).max(1));
    }
    if dispatch.batch_size.is_some() || dispatch.lanes.is_some() {
        toml.push_str("[dispatch]\n");
        if let Some(n) = dispatch.batch_size {
            let _ = writeln!(toml, "batch_size = {n}");
        }
        if let Some(n) = dispatch.lanes {
            let _ = writeln!(toml, "batches_in_flight = {n}");
        }
        toml.push('\n');
    }
    toml.push_str("[channels]\n");
    for channel in ["sms", "email", "webhook"] {
        let backend = if channel == scenario.channel() {
            "bench"
        } else {
            "outbox"
        };
        let _ = writeln!(toml, "{channel} = [\"{backend}\"]");
    }
    toml
}

/// `n` recipients: customers with a phone (or an email address) only, in English and Swahili,
/// in a few zones, some with a component list; or billers who hear by webhook only.
fn write_recipients(path: &Path, people: People, n: usize) -> anyhow::Result<()> {
    const ZONES: [&str; 10] = [
        "",
        "Africa/Nairobi",
        "",
        "Africa/Nairobi",
        "",
        "Africa/Nairobi",
        "",
        "Africa/Kampala",
        "Africa/Dar_es_Salaam",
        "Europe/London",
    ];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "kind,name,phone,email,locale,zone,components,channels")?;
    for i in 0..n {
        let locale = if i % 2 == 0 { "en" } else { "sw" };
        let zone = ZONES[i % ZONES.len()];
        match people {
            People::Phones | People::Mailboxes => {
                // Unique Kenyan mobile numbers, as .ci/gen_recipients.py makes them.
                let (phone, email) = if people == People::Phones {
                    (format!("07{:08}", 10_000_000 + i), String::new())
                } else {
                    (String::new(), format!("c{i}@example.co.ke"))
                };
                let components = if i % 17 == 0 { "pay-bill;buy-goods" } else { "" };
                writeln!(
                    out,
                    "customer,Customer {i},{phone},{email},{locale},{zone},{components},"
                )?;
            }
            People::Billers => {
                writeln!(
                    out,
                    "biller,Biller {i},,biller{i}@example.co.ke,{locale},{zone},,webhook"
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// A Standard Webhooks secret like `tangazo webhooks add` makes: `whsec_` and 32 random bytes.
fn signing_secret() -> anyhow::Result<String> {
    let mut key = [0_u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

/// Checks the ledger against what arrived and measures how late each delivery was: its arrival
/// (at the sink; for the file outbox, its `sent_at`) minus its slot (`due_at`). Returns the
/// lateness and the number of messages that arrived.
fn settle(
    scenario: Scenario,
    enqueued: u64,
    rows: &[ledger::Delivery],
    arrivals: Option<&[Arrival]>,
    outbox_lines: u64,
) -> anyhow::Result<(Lateness, u64)> {
    ensure!(
        rows.len() as u64 == enqueued,
        "the ledger has {} rows, run-once enqueued {enqueued}",
        rows.len()
    );
    if let Some(row) = rows
        .iter()
        .find(|r| r.state != "sent" || r.channel != scenario.channel())
    {
        bail!(
            "a {} delivery is {} in the ledger (expected {} and sent)",
            row.channel,
            row.state,
            scenario.channel()
        );
    }
    let mut late: Vec<i64> = Vec::with_capacity(rows.len());
    let messages = match arrivals {
        None => {
            ensure!(
                outbox_lines == enqueued,
                "the outbox has {outbox_lines} lines for {enqueued} deliveries"
            );
            for row in rows {
                let sent_at = row.sent_at.context("a sent delivery without sent_at")?;
                late.push(sent_at - row.due_at);
            }
            outbox_lines
        }
        Some(arrivals) => {
            ensure!(
                arrivals.len() as u64 == enqueued,
                "the {} sink received {} messages for {enqueued} deliveries",
                scenario.name(),
                arrivals.len()
            );
            let mut due: HashMap<&str, i64> = HashMap::with_capacity(rows.len());
            for row in rows {
                let address = row.address.as_deref().context("a delivery without an address")?;
                ensure!(
                    due.insert(address, row.due_at).is_none(),
                    "two deliveries for one address"
                );
            }
            for arrival in arrivals {
                let slot = due
                    .remove(arrival.key.as_str())
                    .with_context(|| format!("an unexpected or repeated message arrived for {}", arrival.key))?;
                late.push(arrival.at_ms - slot);
            }
            arrivals.len() as u64
        }
    };
    late.sort_unstable();
    let rank = |q: f64| late[((q * late.len() as f64).ceil() as usize).clamp(1, late.len()) - 1];
    let lateness = if late.is_empty() {
        Lateness::default()
    } else {
        Lateness {
            p50: rank(0.50),
            p99: rank(0.99),
            max: late[late.len() - 1],
        }
    };
    Ok((lateness, messages))
}

/// How to run the binary for one run.
struct Tangazo<'a> {
    binary: &'a Path,
    dir: &'a Path,
    config: &'a Path,
    database: &'a str,
}

/// A finished command.
struct Ran {
    stdout: String,
    /// Its stderr, a line each.
    log: Vec<String>,
    seconds: f64,
    peak_rss_kib: u64,
}

/// How long a command may take before the harness gives up on it.
const COMMAND_LIMIT: Duration = Duration::from_secs(3600);

impl Tangazo<'_> {
    /// Runs `tangazo --config … --database … ARGS` in the run's folder, timing it and polling
    /// its peak RSS every 20 ms. Its stderr goes to `{step}.log` in the folder; progress lines
    /// (`…`) are passed on. A failure is an error quoting the end of its stderr.
    async fn run(&self, step: &str, args: &[&str]) -> anyhow::Result<Ran> {
        self.run_inner(step, args, None).await
    }

    /// `run` for a process that does not end by itself (the daemon): stopped with SIGTERM
    /// once `done` is cancelled, and logging JSON lines.
    async fn run_until(
        &self,
        step: &str,
        args: &[&str],
        done: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Ran> {
        self.run_inner(step, args, Some(done)).await
    }

    async fn run_inner(
        &self,
        step: &str,
        args: &[&str],
        done: Option<&tokio_util::sync::CancellationToken>,
    ) -> anyhow::Result<Ran> {
        let mut command = tokio::process::Command::new(self.binary);
        // The environment must not change what is measured (a TANGAZO_NOW left set, say).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TANGAZO_") {
                command.env_remove(key);
            }
        }
        if done.is_some() {
            command.env("TANGAZO_LOG_FORMAT", "json");
        }
        command
            .arg("--config")
            .arg(self.config)
            .arg("--database")
            .arg(self.database)
            .args(args)
            .current_dir(self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let pid = child.id();
        let mut stdout = child.stdout.take().context("no stdout")?;
        let reading = tokio::spawn(async move {
            let mut text = String::new();
            stdout.read_to_string(&mut text).await.map(|_| text)
        });
        let stderr = child.stderr.take().context("no stderr")?;
        let logging = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut kept = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with('…') {
                    eprintln!("            tangazo: {line}");
                }
                kept.push(line);
            }
            kept
        });
        let mut peak = 0;
        let mut terminated = false;
        let status = loop {
            if let (Some(done), Some(pid), false) = (done, pid, terminated)
                && done.is_cancelled()
            {
                let signalled = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await?;
                ensure!(signalled.success(), "could not signal tangazo {}", args.join(" "));
                terminated = true;
            }
            if let Some(kib) = pid.and_then(peak_rss_kib) {
                peak = peak.max(kib);
            }
            if let Ok(status) = tokio::time::timeout(Duration::from_millis(20), child.wait()).await {
                break status?;
            }
            if started.elapsed() > COMMAND_LIMIT {
                child.kill().await?;
                bail!(
                    "tangazo {} took over {} s: stopped",
                    args.join(" "),
                    COMMAND_LIMIT.as_secs()
                );
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let stdout = reading.await?.context("reading tangazo's output")?;
        let stderr = logging.await?;
        let log = self.dir.join(format!("{step}.log"));
        let text: String = stderr.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&log, text).with_context(|| format!("writing {}", log.display()))?;
        if !status.success() {
            let tail = stderr[stderr.len().saturating_sub(15)..].join("\n    ");
            bail!("tangazo {} exited with {status}:\n    {tail}", args.join(" "));
        }
        Ok(Ran {
            stdout,
            log: stderr,
            seconds,
            peak_rss_kib: peak,
        })
    }
}

/// A process's peak resident set (`VmHWM`) so far, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn count(report: &Value, pointer: &str) -> u64 {
    report.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn seconds(report: &Value, pointer: &str) -> anyhow::Result<f64> {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .with_context(|| format!("the run-once report has no {}", &pointer[1..]))
}

fn print_table(outcomes: &[Outcome], smoke: bool) {
    if outcomes.is_empty() {
        return;
    }
    let header = [
        "store",
        "channel",
        "N",
        "import/s",
        "planned",
        "plan/s",
        "sent",
        "dispatch/s",
        "wall s",
        "wall/s",
        "late p50 ms",
        "p99 ms",
        "max ms",
        "peak RSS MiB",
    ];
    let rows: Vec<[String; 14]> = outcomes
        .iter()
        .map(|o| {
            [
                o.store.name().to_owned(),
                o.scenario.name().to_owned(),
                o.recipients.to_string(),
                format!("{:.0}", o.import_per_second),
                o.enqueued.to_string(),
                format!("{:.0}", o.plan_per_second),
                o.sent.to_string(),
                format!("{:.0}", o.dispatch_per_second),
                format!("{:.2}", o.run_once_seconds),
                format!("{:.0}", o.run_once_per_second),
                o.lateness_ms.p50.to_string(),
                o.lateness_ms.p99.to_string(),
                o.lateness_ms.max.to_string(),
                format!("{:.1}", o.peak_rss_mib),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i < 2 {
                let _ = write!(text, "{cell:<w$}  ");
            } else {
                let _ = write!(text, "{cell:>w$}  ");
            }
        }
        text.trim_end().to_owned()
    };
    println!("{}", line(&header.map(str::to_owned)));
    for row in &rows {
        println!("{}", line(row));
    }
    if smoke {
        println!("(smoke run: the counts were checked; numbers at this size mean nothing)");
    }
}

/// The `--output` document.
#[derive(Serialize)]
struct Document<'a> {
    date: String,
    tangazo: Build,
    machine: Machine,
    settings: Settings<'a>,
    results: &'a [Outcome],
    failures: &'a [Failure],
}

#[derive(Serialize)]
struct Build {
    version: &'static str,
    /// `git rev-parse HEAD`, where the sources are a checkout.
    commit: Option<String>,
    /// Whether tracked files differed from that commit.
    uncommitted_changes: Option<bool>,
}

#[derive(Serialize)]
struct Settings<'a> {
    recipients: usize,
    webhook_billers: usize,
    stores: &'a [StoreKind],
    channels: &'a [Scenario],
    smoke: bool,
    /// The backend's rate in a paced run (`--rate`): the daemon ran, not `run-once`.
    rate: Option<u32>,
    /// `--apart`: planning and sending each measured alone, in two `run-once`s.
    apart: bool,
    /// `--batch-size` and `--lanes`, where given.
    dispatch: Dispatch,
}

fn write_json(
    path: &Path,
    args: &Args,
    billers: usize,
    outcomes: &[Outcome],
    failures: &[Failure],
) -> anyhow::Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(manifest)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let document = Document {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        tangazo: Build {
            version: env!("CARGO_PKG_VERSION"),
            commit: git(&["rev-parse", "HEAD"]),
            uncommitted_changes: git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        },
        machine: machine(),
        settings: Settings {
            recipients: args.recipients,
            webhook_billers: billers,
            stores: &args.stores,
            channels: &args.channels,
            smoke: args.smoke,
            rate: args.rate,
            apart: args.apart,
            dispatch: args.dispatch(),
        },
        results: outcomes,
        failures,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(&document)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[derive(Serialize)]
struct Machine {
    nproc: Option<usize>,
    cpu_model: Option<String>,
    memory_mib: Option<u64>,
    os: &'static str,
}

/// Cores, CPU model and memory, from the kernel.
fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: Option<u64> = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok());
    Machine {
        nproc: std::thread::available_parallelism().map(usize::from).ok(),
        cpu_model,
        memory_mib: memory_kib.map(|k| k / 1024),
        os: std::env::consts::OS,
    }
}
