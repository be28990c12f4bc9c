//! `tangazo broadcast`: flags, the confirmation for large audiences, the canary's release
//! question, progress and printing. What a broadcast is, who gets it, what it costs and what a
//! canary allows are the library's (`crate::broadcast`); an interrupted run is finished by the
//! daemon or by running the command again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args};
use serde_json::json;

use super::{CliResult, Ctx, Failure, bad_field, bad_input};
use crate::app;
use crate::broadcast::{self, Canary, Content, Estimate, EstimateInputs, Scan};
use crate::dispatch::handoff::{self, Handoff};
use crate::dispatch::{DispatchReport, Dispatcher};
use crate::domain::{
    Audience, AudienceFilter, Channel, ComponentId, EmailAddress, Locale, Message, MessageText, Notice, PhoneNumber,
    Rendered, Span, parse_instant,
};
use crate::import::{RowRules, Rows};
use crate::planner::notice_deadline;
use crate::shutdown::{CancellationToken, on_signals};
use crate::storage::{Broadcast, Store, StoreError};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["window", "message", "message_file"])))]
pub struct BroadcastArgs {
    /// Send a notice of this window (with --notice)
    #[arg(long, value_name = "ID", requires = "notice")]
    window: Option<i64>,
    /// The window notice: announced, reminder:24h, started, rescheduled, cancelled, completed
    #[arg(long, value_name = "KIND[:OFFSET]", requires = "window")]
    notice: Option<String>,
    /// A free message (SMS text and email body), in English
    #[arg(long, value_name = "TEXT")]
    message: Option<String>,
    /// Its Swahili version (recipients reading Swahili get the English one without it)
    #[arg(long, value_name = "TEXT", requires = "message")]
    message_sw: Option<String>,
    /// Email subject of a free message
    #[arg(long, value_name = "TEXT", requires = "message")]
    subject: Option<String>,
    /// A TOML file with the message per locale: [en] text = "…" subject = "…", [sw] …
    #[arg(long, value_name = "FILE")]
    message_file: Option<PathBuf>,
    /// Makes the broadcast idempotent: the same name never sends twice to a recipient and
    /// channel [default: derived from the message (or window notice) and the audience]
    #[arg(long)]
    name: Option<String>,
    /// customers, billers or all
    #[arg(long, default_value = "all")]
    audience: String,
    /// Only recipients who care about one of these components (comma-separated)
    #[arg(long, value_name = "C,…", value_delimiter = ',')]
    component: Vec<String>,
    /// Only these channels: sms, email, webhook (comma-separated)
    #[arg(long, value_name = "C,…", value_delimiter = ',')]
    channel: Vec<String>,
    /// Only recipients reading this language: en or sw
    #[arg(long)]
    locale: Option<String>,
    /// Only the recipients listed in this CSV (matched by its phone and email columns)
    #[arg(long, value_name = "FILE")]
    recipients: Option<PathBuf>,
    /// After this a free message is no longer sent [default: now + broadcast.deadline]
    #[arg(long, value_name = "TIME", conflicts_with = "window")]
    deadline: Option<String>,
    /// Record nothing: print counts, segments, cost, duration and samples
    #[arg(long)]
    dry_run: bool,
    /// Confirm an audience above broadcast.confirm_above without asking
    #[arg(long)]
    yes: bool,
    /// First send to these seed addresses (a recipients CSV: staff phones and mailboxes), then
    /// wait for a release before the audience gets anything
    #[arg(long, value_name = "FILE")]
    canary: Option<PathBuf>,
    /// Release automatically after this long if no canary message failed (e.g. 10m)
    #[arg(long, value_name = "DURATION", requires = "canary")]
    canary_wait: Option<String>,
}

pub async fn run(ctx: &Ctx, args: BroadcastArgs) -> CliResult {
    let now = ctx.now();
    // A broadcast goes to recipients already recorded: it never creates a database.
    let store = ctx.existing_store().await?;
    let parts = ctx.parts()?;
    let renderer = &parts.renderer;
    let filter = build_filter(ctx, &args)?;
    let (content, deadline) = content(ctx, &store, &args, now).await?;
    if deadline <= now {
        return Err(bad_input(anyhow::anyhow!(
            "the deadline {} has already passed",
            deadline.to_rfc3339()
        )));
    }
    if let Content::Message(m) = &content {
        // A message too long for the segment limit is refused before anything is recorded.
        for locale in Locale::ALL {
            renderer
                .render_message(m, "check", Channel::Sms, locale)
                .map_err(bad_field("--message"))?;
        }
    }
    let name = match &args.name {
        Some(n) if n.trim().is_empty() || n.len() > 120 => {
            return Err(bad_field("--name")("a name is 1 to 120 characters"));
        }
        Some(n) => n.trim().to_owned(),
        None => broadcast::default_name(&content, &filter).context("naming the broadcast")?,
    };
    // The count decides something before anything is recorded for a dry run, a confirmation
    // that may be asked and a canary's release question; with --yes it only informs, and is
    // taken beside the recording instead of before it.
    let counted_first = args.dry_run || !args.yes || args.canary.is_some();
    let scan = if counted_first {
        let scan = broadcast::scan(&store, &content, &filter).await?;
        if args.dry_run {
            return dry_run(ctx, &parts, &content, &name, &scan, deadline);
        }
        if scan.recipients == 0 {
            outln!("no recipient matches this audience: nothing to send");
            return Ok(());
        }
        confirm(ctx, &scan, args.yes)?;
        Some(scan)
    } else {
        None
    };

    let new = content.to_new(name.clone(), filter.clone(), deadline);
    let broadcast = store
        .create_broadcast(&new, now, &ctx.actor)
        .await
        .map_err(|e| match e {
            e @ StoreError::BroadcastNameTaken(_) => bad_field("--name")(e),
            e => e.into(),
        })?;
    let dispatcher = parts.dispatcher(&ctx.config, &store, &format!("broadcast:{}", std::process::id()));
    let stop = CancellationToken::new();
    on_signals(&stop);

    // A canary is always counted first: its release question names the audience.
    if let (Some(file), Some(scan)) = (&args.canary, &scan) {
        let released = canary(
            ctx,
            &store,
            &dispatcher,
            &broadcast,
            file,
            args.canary_wait.as_deref(),
            scan,
            &stop,
        )
        .await?;
        if !released {
            return Ok(());
        }
    }

    // The rows are recorded a page at a time and sent beside the recording, as a tick sends
    // beside its planning: the first pages go out while the rest are recorded.
    let before = broadcast::states(&store, broadcast.id).await?;
    let shown = Shown::new(ctx, &broadcast, before.settled().max(0) as u64);
    if let Some(scan) = &scan {
        shown.counted(scan);
    }
    let started = Instant::now();
    let recorded = CancellationToken::new();
    // The rows that can go out at once are written claimed and handed to this process's lanes
    // where no other process would claim them, as a tick's fan-out is (see
    // `Store::hands_over`).
    let (handing, handed) = if store.hands_over(dispatcher.owner()).await? {
        let config = dispatcher.config();
        let (hand, handed) = handoff::channel(config.batches_in_flight);
        let handing = broadcast::Handing {
            hand,
            owner: dispatcher.owner(),
            lease: config.lease.to_std(),
            batch: config.batch_size,
            clock: &ctx.clock,
            unpaced: Channel::ALL.iter().all(|c| parts.senders.rate(*c).is_none()),
        };
        (Some(handing), Some(handed))
    } else {
        (None, None)
    };
    let record = async {
        // However recording ends, sending finishes what was recorded and stops.
        let _recorded = recorded.clone().drop_guard();
        // Stopped: recording ends between pages; the same command again records the rest.
        let enqueued = broadcast::enqueue_audience(&store, &content, &broadcast, now, handing, &stop).await;
        (enqueued, started.elapsed().as_secs_f64())
    };
    let sending = send(
        ctx,
        &dispatcher,
        Scope {
            broadcast: broadcast.id,
            handed: handed.as_ref(),
            recorded: &recorded,
        },
        &shown,
        &stop,
    );
    // Counted beside the recording (with --yes): the count reads the recipients, recording
    // writes the ledger, and neither waits for the other.
    // It only informs: a count that fails is said, and the broadcast goes on.
    let counting = async {
        if scan.is_some() {
            return scan;
        }
        match broadcast::scan(&store, &content, &filter).await {
            Ok(scan) => {
                shown.counted(&scan);
                Some(scan)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the audience could not be counted; the broadcast goes on");
                None
            }
        }
    };
    let ((enqueued, enqueue_seconds), report, scan) = tokio::join!(record, sending, counting);
    let timing = Timing {
        enqueued: enqueued?.unwrap_or_default(),
        enqueue_seconds,
        dispatch_seconds: started.elapsed().as_secs_f64(),
    };
    let report = report?;
    shown.done();
    finish(ctx, &store, &broadcast, scan.as_ref(), &report, timing, &stop).await
}

fn build_filter(ctx: &Ctx, args: &BroadcastArgs) -> CliResult<AudienceFilter> {
    let audiences = match args.audience.trim().to_ascii_lowercase().as_str() {
        "all" => Vec::new(),
        other => vec![other.parse::<Audience>().map_err(bad_field("--audience"))?],
    };
    let mut components = Vec::new();
    for c in args.component.iter().filter(|c| !c.trim().is_empty()) {
        let id: ComponentId = c.parse().map_err(bad_field("--component"))?;
        if !ctx.config.knows(&id) {
            return Err(bad_field("--component")(format!("unknown component '{id}'")));
        }
        components.push(id);
    }
    let mut channels: Vec<Channel> = args
        .channel
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.parse::<Channel>())
        .collect::<Result<_, _>>()
        .map_err(bad_field("--channel"))?;
    channels.sort();
    channels.dedup();
    components.sort();
    components.dedup();
    let locale = args
        .locale
        .as_deref()
        .map(str::parse::<Locale>)
        .transpose()
        .map_err(bad_field("--locale"))?;
    let subset = match &args.recipients {
        Some(path) => Some(read_subset(path)?),
        None => None,
    };
    Ok(AudienceFilter {
        audiences,
        components,
        channels,
        locale,
        subset,
    })
}

/// The natural keys (E.164 phone, else email) listed in a CSV with `phone` and/or `email`
/// columns. Any bad row refuses the whole file: a subset must be exactly what was meant.
fn read_subset(path: &PathBuf) -> CliResult<Vec<String>> {
    let file =
        std::fs::File::open(path).map_err(|e| bad_input(anyhow::anyhow!("--recipients {}: {e}", path.display())))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let headers = reader
        .headers()
        .map_err(|e| bad_input(anyhow::anyhow!("--recipients {}: {e}", path.display())))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().trim_start_matches('\u{feff}').eq_ignore_ascii_case(name))
    };
    let (phone, email) = (col("phone"), col("email"));
    if phone.is_none() && email.is_none() {
        return Err(bad_input(anyhow::anyhow!(
            "--recipients {}: line 1: no phone or email column",
            path.display()
        )));
    }
    let mut keys = BTreeSet::new();
    let mut errors = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("line {line}: {e}"));
                continue;
            }
        };
        let field = |c: Option<usize>| c.and_then(|c| record.get(c)).map(str::trim).filter(|v| !v.is_empty());
        let key = match (field(phone), field(email)) {
            (Some(p), _) => PhoneNumber::parse(p)
                .map(|p| p.as_str().to_owned())
                .map_err(|e| format!("phone: {e}")),
            (None, Some(e)) => EmailAddress::parse(e)
                .map(|e| e.as_str().to_ascii_lowercase())
                .map_err(|e| format!("email: {e}")),
            (None, None) => continue,
        };
        match key {
            Ok(k) => {
                keys.insert(k);
            }
            Err(reason) => errors.push(format!("line {line}: {reason}")),
        }
    }
    if !errors.is_empty() {
        for e in errors.iter().take(50) {
            errln!("{}: {e}", path.display());
        }
        return Err(bad_input(anyhow::anyhow!(
            "--recipients {}: {} bad rows",
            path.display(),
            errors.len()
        )));
    }
    Ok(keys.into_iter().collect())
}

async fn content(
    ctx: &Ctx,
    store: &Store,
    args: &BroadcastArgs,
    now: DateTime<Utc>,
) -> CliResult<(Content, DateTime<Utc>)> {
    if let (Some(id), Some(notice)) = (args.window, &args.notice) {
        let notice: Notice = notice.parse().map_err(bad_field("--notice"))?;
        let window = super::window_arg(store, id, "--window").await?;
        let deadline = notice_deadline(&window, notice.kind(), &ctx.config.policy).map_err(bad_field("--notice"))?;
        return Ok((
            Content::Notice {
                window: Box::new(window),
                notice,
            },
            deadline,
        ));
    }
    let message = if let Some(path) = &args.message_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad_input(anyhow::anyhow!("--message-file {}: {e}", path.display())))?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            en: MessageText,
            sw: Option<MessageText>,
        }
        let file: File = toml::from_str(&text)
            .map_err(|e| bad_input(anyhow::anyhow!("--message-file {}: {}", path.display(), e.message())))?;
        Message::new(file.en, file.sw).map_err(bad_field("--message-file"))?
    } else {
        let en = MessageText {
            text: args.message.clone().unwrap_or_default(),
            subject: args.subject.clone(),
        };
        let sw = args.message_sw.clone().map(|text| MessageText { text, subject: None });
        Message::new(en, sw).map_err(bad_field("--message"))?
    };
    let deadline = match &args.deadline {
        Some(t) => parse_instant(t, ctx.config.default_zone).map_err(bad_field("--deadline"))?,
        None => now + ctx.config.broadcast_deadline.delta(),
    };
    Ok((Content::Message(message), deadline))
}

fn dry_run(
    ctx: &Ctx,
    parts: &app::Parts,
    content: &Content,
    name: &str,
    scan: &Scan,
    deadline: DateTime<Utc>,
) -> CliResult {
    let (renderer, senders) = (parts.renderer.as_ref(), &parts.senders);
    let estimate = broadcast::estimate(
        content,
        scan,
        &EstimateInputs {
            renderer,
            components: &ctx.config.components,
            costs: &ctx.config.costs,
            rate: &|c| senders.rate(c),
            sample_zone: ctx.config.default_zone,
            now: ctx.now(),
        },
    )
    .map_err(bad_input)?;
    let Estimate {
        lines: table,
        sms_segments: segments,
        cost,
        seconds: durations,
        seconds_total: longest,
        samples,
    } = &estimate;
    let (segments, cost, longest) = (*segments, *cost, *longest);
    let costs = &ctx.config.costs;
    // Sent from now at the configured rates: when the last message is expected.
    let expected_end = ctx.now() + chrono::TimeDelta::milliseconds((longest * 1000.0).ceil() as i64);
    let meets_deadline = expected_end <= deadline;
    let per_channel = |c: Channel| estimate.messages_on(c);
    if ctx.cli_json {
        let samples: BTreeMap<_, _> = samples
            .iter()
            .map(|(l, (sms, email))| {
                let subject = match email {
                    Rendered::Email { subject, .. } => subject.clone(),
                    _ => String::new(),
                };
                (l.as_str(), json!({"sms": sms, "email_subject": subject}))
            })
            .collect();
        return ctx.print_json(&json!({
            "name": name, "dry_run": true, "recipients": scan.recipients, "messages": scan.total_messages(),
            "lines": table, "sms_segments": segments,
            "cost": {"currency": costs.currency, "total": (cost * 100.0).round() / 100.0},
            "seconds": durations.iter().map(|(c, d)| (c.as_str(), *d)).collect::<BTreeMap<_, _>>(),
            "seconds_total": longest,
            "deadline": deadline.to_rfc3339(), "expected_end": expected_end.to_rfc3339(), "meets_deadline": meets_deadline,
            "samples": samples,
        }));
    }
    outln!("broadcast '{name}' — dry run: nothing was recorded or sent");
    outln!(
        "audience: {} recipients, {} messages",
        group(scan.recipients),
        group(scan.total_messages())
    );
    outln!(
        "  {:<8} {:<6} {:<8} {:>12} {:>12}",
        "channel",
        "locale",
        "encoding",
        "messages",
        "segments"
    );
    for l in table {
        outln!(
            "  {:<8} {:<6} {:<8} {:>12} {:>12}",
            l.channel.as_str(),
            l.locale.as_str(),
            l.encoding.as_deref().unwrap_or("-"),
            group(l.messages),
            if l.channel == Channel::Sms {
                group(l.segments)
            } else {
                "-".into()
            }
        );
    }
    outln!(
        "estimated cost: {} SMS segments × {} + {} emails × {} + {} webhooks × {} = {:.2} {}",
        group(segments),
        costs.sms_segment,
        group(per_channel(Channel::Email)),
        costs.email,
        group(per_channel(Channel::Webhook)),
        costs.webhook,
        cost,
        costs.currency
    );
    for (c, d) in durations {
        match d {
            Some(secs) => outln!(
                "estimated time on {c}: {} messages at {}/s: {}",
                group(per_channel(*c)),
                senders.rate(*c).unwrap_or_default(),
                humanize(*secs)
            ),
            None => outln!("estimated time on {c}: no rate configured for its backend (as fast as it accepts)"),
        }
    }
    if longest > 0.0 {
        outln!("estimated fan-out time (channels in parallel): {}", humanize(longest));
    }
    if meets_deadline {
        outln!(
            "deadline {}: the last message is expected by {} ({} to spare)",
            deadline.to_rfc3339(),
            expected_end.to_rfc3339(),
            humanize((deadline - expected_end).num_milliseconds() as f64 / 1000.0)
        );
    } else {
        outln!(
            "WARNING: the deadline {} comes before the last message: sent from now at these rates it lands at {}, {} too late, and what is not sent by the deadline expires (raise the backends' rate, add one, or set a later --deadline)",
            deadline.to_rfc3339(),
            expected_end.to_rfc3339(),
            humanize((expected_end - deadline).num_milliseconds() as f64 / 1000.0)
        );
    }
    for (locale, (sms, email)) in samples {
        if let Rendered::Sms {
            body,
            encoding,
            segments,
        } = sms
        {
            outln!(
                "\nsample sms [{locale}] ({encoding}, {segments} segment{}):\n{body}",
                if *segments == 1 { "" } else { "s" }
            );
        }
        if let Rendered::Email { subject, .. } = email {
            outln!("sample email subject [{locale}]: {subject}");
        }
    }
    Ok(())
}

/// `1234567` → `1,234,567`.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn humanize(secs: f64) -> String {
    let s = secs.ceil() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// Large audiences need --yes, or a yes typed at a terminal.
fn confirm(ctx: &Ctx, scan: &Scan, yes: bool) -> CliResult {
    if yes || scan.recipients <= ctx.config.confirm_above {
        return Ok(());
    }
    let question = format!(
        "send to {} recipients ({} messages)? this is above broadcast.confirm_above ({})",
        group(scan.recipients),
        group(scan.total_messages()),
        group(ctx.config.confirm_above)
    );
    if !std::io::stdin().is_terminal() {
        return Err(bad_field("--yes")(format!(
            "{question}: pass --yes to confirm; nothing was recorded"
        )));
    }
    if ask(&format!("{question} [y/N] "))? {
        Ok(())
    } else {
        Err(bad_input(anyhow::anyhow!("not confirmed: nothing was recorded")))
    }
}

fn ask(question: &str) -> CliResult<bool> {
    out!("{question}");
    std::io::stdout().flush().context("writing the question")?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// Sends to the seed list first. Returns whether the audience may have it now.
#[allow(clippy::too_many_arguments)]
async fn canary(
    ctx: &Ctx,
    store: &Store,
    dispatcher: &Dispatcher,
    broadcast: &Broadcast,
    file: &PathBuf,
    wait: Option<&str>,
    scan: &Scan,
    stop: &CancellationToken,
) -> CliResult<bool> {
    let wait = wait
        .map(|w| w.parse::<Span>())
        .transpose()
        .map_err(bad_field("--canary-wait"))?;
    let rules = RowRules {
        default_zone: ctx.config.default_zone,
        components: &ctx.config.components,
    };
    let input =
        std::fs::File::open(file).map_err(|e| bad_input(anyhow::anyhow!("--canary {}: {e}", file.display())))?;
    let mut seeds = Vec::new();
    for row in Rows::new(std::io::BufReader::new(input), &rules)
        .map_err(|e| bad_input(anyhow::anyhow!("--canary {}: {e}", file.display())))?
    {
        match row.map_err(|e| bad_input(anyhow::anyhow!("--canary {}: {e}", file.display())))? {
            Ok((_, p)) => seeds.push(p),
            Err(e) => return Err(bad_input(anyhow::anyhow!("--canary {}: {e}", file.display()))),
        }
    }
    if seeds.is_empty() {
        return Err(bad_input(anyhow::anyhow!(
            "--canary {}: no seed addresses",
            file.display()
        )));
    }
    let now = ctx.now();
    let seeded = store.seed_recipients(&seeds, now).await?;
    broadcast::enqueue_seeds(store, broadcast, &seeded, now).await?;
    let report = dispatcher
        .run_scoped(&ctx.clock, Some(broadcast.id), stop, &|_| {})
        .await
        .context("sending the canary")?;
    let (sent, failed) = match broadcast::judge_canary(&broadcast::states(store, broadcast.id).await?) {
        Canary::Passed { sent } => (sent, 0),
        Canary::Failed { sent, failed } => (sent, failed),
    };
    outln!(
        "canary: {sent} sent, {failed} failed to {} seed addresses (this run: {} sent)",
        seeded.len(),
        report.sent
    );
    if failed > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "the canary had {failed} failures: nothing was sent to the audience; see `tangazo deliveries summary`"
        )));
    }
    let release = match wait {
        Some(span) => {
            outln!(
                "releasing to {} recipients in {span} unless stopped (Ctrl-C)",
                group(scan.recipients)
            );
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(span.secs().unsigned_abs())) => {}
                _ = stop.cancelled() => {}
            }
            let states = broadcast::states(store, broadcast.id).await?;
            let failed = states.get(crate::domain::DeliveryState::Failed);
            if stop.is_cancelled() || failed > 0 {
                outln!(
                    "not released ({}): nothing was sent to the audience",
                    if failed > 0 {
                        "a canary message failed"
                    } else {
                        "stopped"
                    }
                );
                false
            } else {
                true
            }
        }
        None if std::io::stdin().is_terminal() => ask(&format!(
            "check the seed phones and mailboxes; release to {} recipients? [y/N] ",
            group(scan.recipients)
        ))?,
        None => {
            outln!(
                "canary sent; nothing was sent to the audience. Release it by running the same command without --canary (or with --canary-wait)."
            );
            false
        }
    };
    Ok(release)
}

/// What `send` sends: one broadcast's rows, taking first the batches recording hands over if
/// it does, until `recorded` is cancelled and nothing recorded is left.
struct Scope<'a> {
    broadcast: i64,
    handed: Option<&'a Handoff>,
    recorded: &'a CancellationToken,
}

/// What the command shows while it sends: the audience once it is counted, then a bar at a
/// terminal or a line every few seconds elsewhere; nothing with --json.
struct Shown<'a> {
    ctx: &'a Ctx,
    broadcast: &'a Broadcast,
    bar: Option<indicatif::ProgressBar>,
    /// Messages the count found; 0 until it is in.
    total: AtomicU64,
    /// Rows settled before this run.
    already: u64,
    started: Instant,
    last_line: Mutex<Instant>,
}

impl<'a> Shown<'a> {
    fn new(ctx: &'a Ctx, broadcast: &'a Broadcast, already: u64) -> Shown<'a> {
        let bar = (std::io::stdout().is_terminal() && !ctx.cli_json).then(|| {
            let bar = indicatif::ProgressBar::no_length();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} sent or settled · {per_sec} · ETA {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(already);
            bar
        });
        Shown {
            ctx,
            broadcast,
            bar,
            total: AtomicU64::new(0),
            already,
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// The audience is counted: its size is told, and the bar gets its length.
    fn counted(&self, scan: &Scan) {
        let total = scan.total_messages();
        self.total.store(total, Ordering::Relaxed);
        if self.ctx.cli_json {
            return;
        }
        let already = self.already;
        let line = format!(
            "broadcast '{}' (id {}): {} recipients, {} messages{}",
            self.broadcast.name,
            self.broadcast.id,
            scan.recipients,
            total,
            if already > 0 {
                format!(" ({already} already done)")
            } else {
                String::new()
            }
        );
        match &self.bar {
            Some(bar) => {
                // A biller with several endpoints has a row for each: the bar may be past it.
                bar.set_length(total.max(bar.position()));
                bar.println(line);
            }
            // A closed stdout ends the command after this batch, at `finish`.
            None => {
                let _ = super::write_stdout(format_args!("{line}\n"));
            }
        }
    }

    fn progress(&self, r: &DispatchReport) {
        let done = self.already + r.sent + r.failed + r.expired;
        let Ok(mut last_line) = self.last_line.lock() else {
            return;
        };
        match &self.bar {
            Some(bar) => {
                if bar.length().is_some_and(|len| done > len) {
                    bar.set_length(done);
                }
                bar.set_position(done);
            }
            None if !self.ctx.cli_json && last_line.elapsed() >= Duration::from_secs(2) => {
                *last_line = Instant::now();
                let rate = (r.sent + r.failed + r.expired) as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
                let of = match self.total.load(Ordering::Relaxed) {
                    0 => String::new(),
                    total => format!("/{total}"),
                };
                let _ = super::write_stdout(format_args!("… {done}{of} sent or settled ({rate:.0}/s)\n"));
            }
            None => {}
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Sends the broadcast's rows as they are recorded (see `Scope`), showing how far it got.
async fn send(
    ctx: &Ctx,
    dispatcher: &Dispatcher,
    scope: Scope<'_>,
    shown: &Shown<'_>,
    stop: &CancellationToken,
) -> CliResult<DispatchReport> {
    let progress = |r: &DispatchReport| shown.progress(r);
    let broadcast = Some(scope.broadcast);
    let sending = async {
        match scope.handed {
            Some(handed) => {
                dispatcher
                    .run_handed(&ctx.clock, broadcast, handed, scope.recorded, stop, &progress)
                    .await
            }
            None => {
                dispatcher
                    .run_alongside(&ctx.clock, broadcast, scope.recorded, stop, &progress)
                    .await
            }
        }
    };
    Ok(crate::scheduler::taking_part(dispatcher, sending)
        .await
        .context("sending")?)
}

/// How long this run took to record its rows and to send them.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Rows newly recorded.
    enqueued: u64,
    /// From the start of recording to its end.
    enqueue_seconds: f64,
    /// From the start of recording (sending starts with it) to the end of sending.
    dispatch_seconds: f64,
}

async fn finish(
    ctx: &Ctx,
    store: &Store,
    broadcast: &Broadcast,
    scan: Option<&Scan>,
    report: &DispatchReport,
    timing: Timing,
    stop: &CancellationToken,
) -> CliResult {
    let states = broadcast::states(store, broadcast.id).await?;
    let left = states.open();
    if ctx.cli_json {
        ctx.print_json(&json!({
            "name": broadcast.name,
            "id": broadcast.id,
            "recipients": scan.map(|s| s.recipients),
            "messages": scan.map(Scan::total_messages),
            "this_run": report,
            "states": states,
            "enqueued": timing.enqueued,
            "enqueue_seconds": timing.enqueue_seconds,
            "dispatch_seconds": timing.dispatch_seconds,
        }))?;
    } else if states.0.is_empty() && scan.is_some_and(|s| s.recipients == 0) {
        // Counted beside the recording (--yes): the broadcast is recorded, with no rows.
        outln!("no recipient matches this audience: nothing to send");
    } else {
        let line: Vec<String> = states.0.iter().map(|(s, n)| format!("{s} {n}")).collect();
        outln!(
            "broadcast '{}': {} (this run sent {})",
            broadcast.name,
            line.join(", "),
            report.sent
        );
    }
    if stop.is_cancelled() && left > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "stopped: {left} deliveries stay queued; `tangazo daemon` or the same command again will send them"
        )));
    }
    Ok(())
}
