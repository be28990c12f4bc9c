//! Operations: init, config check, templates check, run-once, daemon, deliveries summary.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use super::{CliResult, Ctx, Failure, bad_field, bad_input, window_arg};
use crate::app::owner;
use crate::clock::Clock;
use crate::config::EXAMPLE;
use crate::domain::{DeliveryState, WindowId};
use crate::scheduler::{Alarm, Progress, TickReport};
use crate::shutdown::{CancellationToken, on_signals};
use crate::storage::{Dialect, NoticeLogRow, SummaryRow};

pub fn init(path: Option<&Path>, force: bool) -> CliResult {
    let path = path.unwrap_or(Path::new("tangazo.toml"));
    if path.exists() && !force {
        return Err(bad_input(anyhow::anyhow!(
            "{} already exists (use --force to overwrite)",
            path.display()
        )));
    }
    std::fs::write(path, EXAMPLE).with_context(|| format!("writing {}", path.display()))?;
    outln!(
        "wrote {}: every key is documented there; check it with `tangazo config check`",
        path.display()
    );
    Ok(())
}

pub fn config_check(ctx: &Ctx) -> CliResult {
    // Loading already validated it; senders and templates are checked by building them.
    ctx.senders()?;
    if ctx.cli_json {
        let text = ctx.config.to_redacted_toml();
        let value: toml::Value = toml::from_str(&text).context("re-reading the effective configuration")?;
        return ctx.print_json(&value);
    }
    outln!("# effective configuration (secrets redacted)");
    out!("{}", ctx.config.to_redacted_toml());
    Ok(())
}

pub fn templates_check(ctx: &Ctx) -> CliResult {
    let renderer = ctx.renderer()?;
    let report = renderer.check(&ctx.config.components);
    let templates = crate::render::CheckReport::templates();
    let max = ctx.config.max_sms_segments;
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    if ctx.cli_json {
        let segments: Vec<_> = report
            .segments
            .iter()
            .map(|s| {
                json!({
                    "audience": s.audience, "locale": s.locale, "notice": s.notice.as_str(),
                    "typical": s.typical, "typical_encoding": s.typical_encoding,
                    "worst": s.worst, "worst_encoding": s.worst_encoding, "worst_body": s.worst_body,
                })
            })
            .collect();
        ctx.print_json(&json!({
            "templates": templates, "max_segments": max, "segments": segments,
            "problems": problems, "warnings": report.warnings,
        }))?;
    } else {
        outln!("SMS segments per notice: typical (3 components, in the window's zone, on time) / worst case");
        outln!(
            "{:<9} {:<6} {:<12} {:>8} {:>6}",
            "audience",
            "locale",
            "notice",
            "typical",
            "worst"
        );
        for s in &report.segments {
            let mark = if s.worst > max { "  over the limit" } else { "" };
            outln!(
                "{:<9} {:<6} {:<12} {:>8} {:>6}{mark}",
                s.audience.as_str(),
                s.locale.as_str(),
                s.notice.as_str(),
                s.typical,
                s.worst
            );
        }
        for w in &report.warnings {
            errln!("warning: {w}");
        }
        for p in &problems {
            errln!("error: {p}");
        }
        for s in report.segments.iter().filter(|s| s.worst > max) {
            errln!(
                "the worst case of the {} {} {} SMS ({} characters):\n{}",
                s.audience.as_str(),
                s.locale.as_str(),
                s.notice.as_str(),
                s.worst_body.chars().count(),
                s.worst_body
            );
        }
    }
    if !problems.is_empty() {
        return Err(bad_input(anyhow::anyhow!(
            "{} problem{} in {templates} templates",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        )));
    }
    if !ctx.cli_json {
        outln!(
            "all {templates} templates render (2 locales × customers and billers × 6 notice kinds × sms, email subject, text and html); every SMS within {max} segments, even in the worst case"
        );
    }
    Ok(())
}

/// For whom `preview` renders: each unset choice falls back to the recipient's, then a default.
pub struct View<'a> {
    pub locale: Option<&'a str>,
    pub zone: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub recipient: Option<&'a str>,
}

pub async fn preview(ctx: &Ctx, window: i64, notice: &str, channel: &str, view: View<'_>) -> CliResult {
    let View {
        locale,
        zone,
        audience,
        recipient,
    } = view;
    let notice: crate::domain::Notice = notice.parse().map_err(bad_field("--notice"))?;
    let channel: crate::domain::Channel = channel.parse().map_err(bad_field("--channel"))?;
    let store = ctx.existing_store().await?;
    let window = window_arg(&store, window, "--window").await?;
    let who = match recipient {
        Some(r) => Some(find_recipient(&store, r).await?),
        None => None,
    };
    let locale = match locale {
        Some(l) => l.parse().map_err(bad_field("--locale"))?,
        None => who.as_ref().map(|r| r.profile.locale).unwrap_or_default(),
    };
    let zone = match zone {
        Some(z) => z.parse().map_err(bad_field("--zone"))?,
        None => who.as_ref().map(|r| r.profile.zone).unwrap_or(window.zone),
    };
    let audience = match audience {
        Some(a) => a.parse().map_err(bad_field("--audience"))?,
        None => who
            .as_ref()
            .map_or(crate::domain::Audience::Customer, |r| r.profile.kind),
    };
    let renderer = ctx.renderer()?;
    // As it would go out: a reminder at its time (or now, if that has passed).
    let sent_at = match notice.offset() {
        Some(offset) => ctx.now().max(window.schedule.starts_at() - offset.delta()),
        None => ctx.now(),
    };
    let facts = crate::render::NoticeFacts::new(&window, notice, &ctx.config.components, sent_at);
    let rendered = renderer
        .render(&facts, audience, channel, locale, zone)
        .map_err(bad_input)?;
    if ctx.cli_json {
        return ctx.print_json(&rendered);
    }
    match &rendered {
        crate::domain::Rendered::Sms {
            body,
            encoding,
            segments,
        } => {
            outln!("{body}");
            outln!(
                "--\n{} characters, {encoding}, {segments} segment{}",
                body.chars().count(),
                if *segments == 1 { "" } else { "s" }
            );
        }
        crate::domain::Rendered::Email { subject, text, html } => {
            outln!("Subject: {subject}\n\n{text}\n-- text/html --\n{html}");
        }
        crate::domain::Rendered::Webhook { payload } => {
            outln!(
                "{}",
                serde_json::to_string_pretty(payload).context("encoding the payload")?
            );
        }
    }
    Ok(())
}

/// A recipient by id, phone number or email address.
pub(super) async fn find_recipient(store: &crate::storage::Store, who: &str) -> CliResult<crate::domain::Recipient> {
    let who = who.trim();
    // A short number without a leading 0 or + is an id; anything longer is a phone number.
    let as_id = (who.len() <= 9 && !who.starts_with(['0', '+']))
        .then(|| who.parse::<i64>().ok())
        .flatten();
    let key = if let Some(id) = as_id.map(crate::domain::RecipientId) {
        let page = store
            .recipients_page(None, crate::domain::RecipientId(id.0 - 1), 1)
            .await?;
        if let Some((_, why)) = page.unreadable.iter().find(|u| u.0 == id) {
            return Err(bad_field("--recipient")(format!(
                "recipient {id} cannot be read: {why}"
            )));
        }
        return page
            .recipients
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| bad_field("--recipient")(format!("no recipient has id {id}")));
    } else if who.contains('@') {
        crate::domain::EmailAddress::parse(who)
            .map_err(bad_field("--recipient"))?
            .as_str()
            .to_ascii_lowercase()
    } else {
        crate::domain::PhoneNumber::parse(who)
            .map_err(bad_field("--recipient"))?
            .as_str()
            .to_owned()
    };
    store
        .recipient_by_key(&key)
        .await?
        .ok_or_else(|| bad_field("--recipient")(format!("no recipient has the phone or email {key}")))
}

pub async fn run_once(ctx: &Ctx) -> CliResult {
    // Templates that do not all render stop the run before anything is opened or recorded.
    let parts = ctx.parts()?;
    let store = ctx.store().await?;
    let scheduler = parts.scheduler(&ctx.config, &store, &owner("run-once"));
    let stop = CancellationToken::new();
    on_signals(&stop);
    // Never minutes of silence: a line on stderr every few seconds while a tick is long.
    let started = std::time::Instant::now();
    let last = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |p: Progress| {
        let Ok(mut last) = last.lock() else { return };
        if last.elapsed() < std::time::Duration::from_secs(3) {
            return;
        }
        *last = std::time::Instant::now();
        let secs = started.elapsed().as_secs();
        match p {
            Progress::Planning {
                window,
                notice,
                enqueued,
                read_up_to,
            } => errln!(
                "… {secs} s: window {window} {notice}: {enqueued} deliveries recorded (recipients up to id {read_up_to})"
            ),
            Progress::Sending(r) => errln!(
                "… {secs} s: {} sent, {} retrying, {} failed",
                r.sent,
                r.retried,
                r.failed
            ),
        }
    };
    let tick = scheduler.tick_reporting(&ctx.clock, &stop, &progress);
    let report = crate::scheduler::taking_part(scheduler.dispatcher(), tick).await;
    // The lead is given up however the tick ended, so a daemon plans at once.
    let stepped_down = scheduler.step_down().await;
    let report = report.context("tick")?;
    stepped_down.context("giving up the lead")?;
    print_tick(ctx, &report)
}

fn print_tick(ctx: &Ctx, r: &TickReport) -> CliResult {
    if ctx.cli_json {
        return ctx.print_json(r);
    }
    if !r.led {
        outln!(
            "not planned here: {} leads (plans and moves windows on); this run only sent what was due",
            r.leader.as_deref().unwrap_or("another daemon")
        );
    }
    for t in &r.transitions {
        outln!("{t}");
    }
    for p in &r.cannot_meet_deadline {
        outln!("WARNING: {}", super::windows::late_plan_line(p));
    }
    for p in &r.planned {
        outln!("planned   {p}");
    }
    for p in &r.recorded {
        outln!("recorded  {p}");
    }
    let d = &r.dispatch;
    outln!(
        "enqueued {}, superseded {}, expired {}; sent {}, retrying {}, failed {}, expired while sending {}",
        r.enqueued,
        r.superseded,
        r.expired,
        d.sent,
        d.retried,
        d.failed,
        d.expired
    );
    let released = &r.released;
    if released.total() > 0 {
        outln!(
            "lapsed claims settled: {} back in the queue, {} expired, {} superseded (each flagged possibly duplicate)",
            released.returned,
            released.expired,
            released.superseded
        );
    }
    if d.possibly_duplicate + d.superseded + d.lost > 0 {
        outln!(
            "sent again after a lapsed claim (possibly duplicate) {}; superseded in flight {}; outcomes lost to another worker {}",
            d.possibly_duplicate,
            d.superseded,
            d.lost
        );
    }
    outln!("left claimed {}", r.left_claimed);
    for a in &r.alarms {
        outln!("ALARM: {}", a.message);
    }
    if !r.unreadable.is_empty() {
        outln!(
            "recipients skipped because their stored row cannot be read: {} (not told of this notice: fix them with `recipients import`, then reach them with `broadcast --window ID --notice KIND`)",
            r.unreadable.len()
        );
        for (id, why) in r.unreadable.iter().take(10) {
            outln!("  recipient {id}: {why}");
        }
    }
    Ok(())
}

/// Holds the SQLite daemon lock for as long as it lives.
struct DaemonLock {
    _file: std::fs::File,
}

/// One daemon per SQLite file: an OS lock on `FILE.lock`, released by the kernel when the
/// process dies however it dies, so `kill -9` never blocks a restart.
fn lock_sqlite(db: &Path) -> CliResult<DaemonLock> {
    let path = db.with_file_name(format!(
        "{}.lock",
        db.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tangazo.db".into())
    ));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(DaemonLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(Failure::Runtime(anyhow::anyhow!(
            "another tangazo daemon is already running on {} (it holds {}); stop it first, or use PostgreSQL to run several daemons on one database",
            db.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Failure::Runtime(
            anyhow::Error::new(e).context(format!("locking {}", path.display())),
        )),
    }
}

pub async fn daemon(ctx: &Ctx, tick: Option<u64>, listen: Option<&str>, fixed_now: bool) -> CliResult {
    // Signals are handled before the lock is taken: a stop that comes once the lock is held
    // always finds the daemon ready for it.
    let stop = CancellationToken::new();
    on_signals(&stop);
    // Templates that do not all render stop the daemon before it opens or records anything.
    let parts = ctx.parts()?;
    let store = ctx.store().await?;
    let _lock = match (store.dialect(), store.sqlite_file()) {
        (Dialect::Sqlite, Some(file)) => Some(lock_sqlite(file)?),
        _ => None,
    };
    let clock = if fixed_now {
        Clock::starting_at(ctx.now())
    } else {
        Clock::System
    };
    let every = Duration::from_secs(tick.unwrap_or(ctx.config.dispatch.tick.secs().unsigned_abs()).max(1));
    let me = owner("daemon");
    if store.dialect() == Dialect::Sqlite {
        // The lock says no other daemon is alive: whatever a daemon left claimed is settled
        // now, not after its lease.
        let released = store.release_dead_daemons(&me, clock.now()).await?;
        store.forget_other_daemons(&me).await?;
        if released.total() > 0 {
            tracing::warn!(
                returned = released.returned,
                expired = released.expired,
                superseded = released.superseded,
                "claims left by a daemon that died, settled and flagged possibly duplicate"
            );
        }
    }
    let scheduler = parts.scheduler(&ctx.config, &store, &me);
    // The HTTP side, when asked for, shares the store, the clock and the stop.
    let server = match super::serve::listen_addr(ctx, listen)? {
        Some(addr) => {
            let listener = crate::http::bind(addr).await.map_err(bad_input)?;
            let state = crate::http::AppState::new(
                store.clone(),
                clock,
                ctx.config.clone(),
                std::sync::Arc::clone(&parts.renderer),
                parts.senders.clone(),
            )
            .await?;
            Some(tokio::spawn(crate::http::serve(listener, state, stop.clone())))
        }
        None => None,
    };
    tracing::info!(database = %ctx.config.database_url, "daemon starting");
    crate::scheduler::run(scheduler, clock, every, stop.clone()).await;
    if let Some(server) = server {
        // The scheduler stops on the same token; the server finishes its requests in flight.
        stop.cancel();
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %crate::domain::error_chain(&e), "HTTP server failed"),
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        }
    }
    store.close().await;
    Ok(())
}

pub async fn summary(ctx: &Ctx, window: Option<i64>) -> CliResult {
    let store = ctx.existing_store().await?;
    let window = window.map(WindowId);
    if let Some(id) = window {
        window_arg(&store, id.0, "--window").await?;
    }
    let rows = store.summary(window).await?;
    let log = store.notice_log(window).await?;
    let now = ctx.now();
    let windows: Vec<_> = store
        .windows()
        .await?
        .into_iter()
        .filter(|w| window.is_none_or(|id| id == w.id))
        .collect();
    let mut alarms: Vec<Alarm> = windows.iter().filter_map(|w| Alarm::overrun(w, now)).collect();
    // A sender that paused itself (a provider's balance ran out) while the window's notices
    // were going out: raised once for the window's revision, shown while it holds.
    for w in windows
        .iter()
        .filter(|w| w.status != crate::domain::WindowStatus::Completed)
    {
        for entry in store.history(w.id).await? {
            if entry.action == "alarm" && entry.revision == w.revision && entry.details["kind"] == "sender paused" {
                alarms.push(Alarm {
                    window_id: w.id.0,
                    title: w.title.en.clone(),
                    ends_at: w.schedule.ends_at(),
                    message: entry.details["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    if ctx.cli_json {
        return ctx.print_json(&json!({"deliveries": rows, "notices": log, "alarms": alarms}));
    }
    print_summary(&rows, &log, &alarms)?;
    Ok(())
}

pub async fn list(ctx: &Ctx, window: i64, state: Option<&str>) -> CliResult {
    let state = state
        .map(str::parse::<DeliveryState>)
        .transpose()
        .map_err(bad_field("--state"))?;
    let store = ctx.existing_store().await?;
    let window = window_arg(&store, window, "--window").await?.id;
    let rows = store.deliveries(window, state, None).await?;
    if ctx.cli_json {
        return ctx.print_json(&rows);
    }
    if rows.is_empty() {
        outln!("no deliveries");
        return Ok(());
    }
    outln!(
        "{:>8}  {:<16}  {:<14}  {:<8}  {:<10}  {:>8}  {:<5}  last error",
        "id",
        "recipient",
        "notice",
        "channel",
        "state",
        "attempts",
        "flags"
    );
    for r in &rows {
        outln!(
            "{:>8}  {:<16}  {:<14}  {:<8}  {:<10}  {:>8}  {:<5}  {}",
            r.id,
            r.to,
            r.notice,
            r.channel,
            r.state.as_str(),
            r.attempts,
            if r.possibly_duplicate { "dup?" } else { "" },
            r.last_error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn retry(ctx: &Ctx, window: i64, state: &str, dry_run: bool) -> CliResult {
    let state: DeliveryState = state.parse().map_err(bad_field("--state"))?;
    if !matches!(state, DeliveryState::Failed | DeliveryState::Expired) {
        return Err(bad_field("--state")(
            "only failed or expired deliveries can be re-queued",
        ));
    }
    let store = ctx.existing_store().await?;
    let window = window_arg(&store, window, "--window").await?.id;
    let done = store.requeue(window, state, ctx.now(), dry_run).await?;
    if ctx.cli_json {
        return ctx.print_json(&json!({"dry_run": dry_run, "requeued": done.requeued, "too_late": done.too_late}));
    }
    let verb = if dry_run { "would re-queue" } else { "re-queued" };
    outln!(
        "{verb} {} {state} deliveries of window {window}; {} cannot make their deadline and stay {state}",
        done.requeued,
        done.too_late
    );
    Ok(())
}

/// `deliveries pause` (`pause`) or `deliveries resume`: every daemon sharing the database stops
/// or starts claiming the window's deliveries at its next claim.
pub async fn pause(ctx: &Ctx, window: i64, pause: bool) -> CliResult {
    let store = ctx.existing_store().await?;
    let window = window_arg(&store, window, "--window").await?.id;
    let changed = if pause {
        store.pause_window(window, &ctx.actor, ctx.now()).await?
    } else {
        store.resume_window(window).await?
    };
    let pending = store
        .summary(Some(window))
        .await?
        .iter()
        .filter(|r| r.state == DeliveryState::Pending)
        .map(|r| r.count)
        .sum::<i64>();
    if ctx.cli_json {
        return ctx.print_json(&json!({"window": window.0, "paused": pause, "changed": changed, "pending": pending}));
    }
    match (pause, changed) {
        (true, true) => outln!(
            "window {window} paused: no daemon claims its deliveries ({pending} pending) until `tangazo deliveries resume --window {window}`; batches already in flight finish"
        ),
        (true, false) => outln!("window {window} was already paused; nothing changed"),
        (false, true) => outln!("window {window} resumed: its {pending} pending deliveries go out as they fall due"),
        (false, false) => outln!("window {window} was not paused; nothing changed"),
    }
    Ok(())
}

/// `tangazo daemons`: the live daemons, the leader first.
pub async fn daemons(ctx: &Ctx) -> CliResult {
    let store = ctx.existing_store().await?;
    let daemons = store.daemons().await?;
    let paused = store.paused_windows().await?;
    if ctx.cli_json {
        return ctx.print_json(&json!({"daemons": daemons, "paused_windows": paused}));
    }
    if daemons.is_empty() {
        outln!("no daemon is alive on this database: start one with `tangazo daemon`");
    } else {
        outln!(
            "{:<40} {:<7} {:<26} {:<26} {:>10} {:>8}",
            "daemon",
            "role",
            "started",
            "last seen",
            "sent",
            "per s"
        );
        for d in &daemons {
            outln!(
                "{:<40} {:<7} {:<26} {:<26} {:>10} {:>8.1}",
                d.name,
                if d.leader { "leader" } else { "worker" },
                d.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                d.seen_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                d.sent,
                d.rate
            );
        }
    }
    for p in &paused {
        outln!(
            "window {} paused since {} by {}",
            p.window,
            p.paused_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            p.actor
        );
    }
    Ok(())
}

/// `w1` for a window's own rows, `b2` for a broadcast's.
fn source_label(r: &SummaryRow) -> String {
    match (r.broadcast_id, r.window_id) {
        (Some(b), _) => format!("b{b}"),
        (None, Some(w)) => format!("w{w}"),
        (None, None) => "-".to_owned(),
    }
}

/// Prints delivery counts as a table: one line per (window or broadcast, notice, channel),
/// one column per state.
pub(super) fn print_summary(rows: &[SummaryRow], log: &[NoticeLogRow], alarms: &[Alarm]) -> CliResult {
    if rows.is_empty() {
        outln!("no deliveries recorded");
    } else {
        let states: Vec<&str> = DeliveryState::ALL.iter().map(|s| s.as_str()).collect();
        out!("{:<8}  {:<16}  {:<8}", "source", "notice", "channel");
        for s in &states {
            out!("  {s:>10}");
        }
        outln!();
        // Lines in first-seen order (the rows come oldest first).
        let mut lines: Vec<(String, String, String, BTreeMap<String, i64>)> = Vec::new();
        for r in rows {
            let source = source_label(r);
            let pos = match lines
                .iter()
                .position(|l| l.0 == source && l.1 == r.notice && l.2 == r.channel)
            {
                Some(p) => p,
                None => {
                    lines.push((source, r.notice.clone(), r.channel.clone(), BTreeMap::new()));
                    lines.len() - 1
                }
            };
            *lines[pos].3.entry(r.state.as_str().to_owned()).or_default() += r.count;
        }
        for (source, notice, channel, counts) in &lines {
            out!("{source:<8}  {notice:<16}  {channel:<8}");
            for s in &states {
                out!("  {:>10}", counts.get(*s).copied().unwrap_or(0));
            }
            outln!();
        }
    }
    let flagged: Vec<&SummaryRow> = rows.iter().filter(|r| r.possibly_duplicate > 0).collect();
    if !flagged.is_empty() {
        outln!("possibly duplicate (claimed by a worker that died or lost its lease; may have gone out twice):");
        for r in flagged {
            let source = source_label(r);
            outln!(
                "  {source:<8}  {:<16}  {:<8}  {:<10}  {}",
                r.notice,
                r.channel,
                r.state.as_str(),
                r.possibly_duplicate
            );
        }
    }
    if !log.is_empty() {
        outln!("notices not sent as a whole (recorded once, not per recipient):");
        for l in log {
            outln!(
                "  window {} r{} {:<14} {:<8} {}",
                l.window_id,
                l.revision,
                l.notice,
                l.audience,
                l.outcome
            );
        }
    }
    for a in alarms {
        outln!("ALARM: {}", a.message);
    }
    Ok(())
}

pub async fn attempts(ctx: &Ctx, id: i64) -> CliResult {
    let store = ctx.existing_store().await?;
    let attempts = store.attempts(id).await?;
    if ctx.cli_json {
        return ctx.print_json(&attempts);
    }
    if attempts.is_empty() {
        outln!("delivery {id}: no attempts recorded");
        return Ok(());
    }
    outln!(
        "{:<20}  {:<12}  {:<10}  {:<8}  {:>7}  {:<20}  error",
        "at (UTC)",
        "backend",
        "outcome",
        "status",
        "ms",
        "provider id"
    );
    for a in &attempts {
        outln!(
            "{:<20}  {:<12}  {:<10}  {:<8}  {:>7}  {:<20}  {}",
            a.at.format("%Y-%m-%d %H:%M:%S"),
            a.backend,
            a.outcome,
            a.status.as_deref().unwrap_or("-"),
            a.latency_ms,
            a.provider_id.as_deref().unwrap_or("-"),
            a.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn senders_check(ctx: &Ctx) -> CliResult {
    // Every channel must name defined backends, and every backend must build.
    ctx.senders()?;
    let context = super::console();
    let mut results = Vec::new();
    for (name, config) in &ctx.config.senders {
        let kind = serde_json::to_value(&config.backend)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let outcome = match config.build_sender(name, &context) {
            Ok(sender) => tokio::time::timeout(std::time::Duration::from_secs(20), sender.check())
                .await
                .unwrap_or_else(|_| Err("no answer within 20 s".to_owned())),
            Err(e) => Err(e),
        };
        results.push((name.clone(), kind, outcome));
    }
    let failed = results.iter().filter(|r| r.2.is_err()).count();
    if ctx.cli_json {
        let rows: Vec<_> = results
            .iter()
            .map(|(name, kind, r)| match r {
                Ok(detail) => json!({"sender": name, "type": kind, "ok": true, "detail": detail}),
                Err(error) => json!({"sender": name, "type": kind, "ok": false, "error": error}),
            })
            .collect();
        ctx.print_json(&rows)?;
    } else {
        for (name, kind, r) in &results {
            match r {
                Ok(detail) => outln!("{name} ({kind}): ok, {detail}"),
                Err(error) => outln!("{name} ({kind}): FAILED, {error}"),
            }
        }
    }
    if failed > 0 {
        return Err(bad_input(anyhow::anyhow!(
            "{failed} of {} senders failed the check",
            results.len()
        )));
    }
    Ok(())
}
