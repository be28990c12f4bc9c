//! `tangazo window …`: record maintenance windows and change them.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::json;

use super::{CliResult, Ctx, bad_field, bad_input};
use crate::domain::Locale;
use crate::domain::{
    ComponentId, Localized, NewWindow, Schedule, Window, WindowError, WindowId, Zone, parse_instant, split_list,
};
use crate::planner::pace::{AudienceSize, Capacity, FanOutPlan, window_plan};
use crate::render::format_instant;
use crate::storage::{Store, StoreError};

#[derive(Debug, Subcommand)]
pub enum WindowCommand {
    /// Record a new window; prints only its id
    ///
    /// Times are `YYYY-MM-DD HH:MM[:SS]` read in --zone, or RFC 3339 with an offset. A local
    /// time that does not exist or is ambiguous in the zone (daylight saving) is refused.
    #[command(verbatim_doc_comment)]
    Add {
        /// The window's title in English, as customers will read it (at most 200 characters)
        #[arg(long)]
        title: String,
        /// Swahili title (the English one is used where this is absent)
        #[arg(long)]
        title_sw: Option<String>,
        /// What happens and what to do, in English (emails and billers' notices; at most 2,000
        /// characters)
        #[arg(long, default_value = "")]
        description: String,
        /// The description in Swahili
        #[arg(long)]
        description_sw: Option<String>,
        /// Affected components, comma-separated (see [components] in the configuration)
        #[arg(long, value_name = "A,B")]
        components: String,
        /// When the work starts (in the future)
        #[arg(long, value_name = "TIME")]
        start: String,
        /// When the service is back (after the start)
        #[arg(long, value_name = "TIME")]
        end: String,
        /// IANA zone the times are announced in [default: default_zone from the configuration]
        #[arg(long)]
        zone: Option<String>,
        /// Complete the window at its planned end without an operator's confirmation
        #[arg(long)]
        auto_complete: bool,
    },
    /// Correct the wording, or change the affected components
    ///
    /// A wording fix (title, description) keeps the revision and notifies nobody: notices not
    /// yet sent use the new text. New components are a new revision: those already told hear
    /// of the change, and recipients newly affected are told for the first time.
    #[command(verbatim_doc_comment)]
    Edit {
        /// The window's id (see `tangazo window list`)
        id: i64,
        /// New English title
        #[arg(long)]
        title: Option<String>,
        /// New Swahili title
        #[arg(long)]
        title_sw: Option<String>,
        /// New English description
        #[arg(long)]
        description: Option<String>,
        /// New Swahili description
        #[arg(long)]
        description_sw: Option<String>,
        /// The new list of affected components, comma-separated (a new revision)
        #[arg(long, value_name = "A,B")]
        components: Option<String>,
    },
    /// List windows, newest first
    List,
    /// Show a window and its history
    Show {
        /// The window's id (see `tangazo window list`)
        id: i64,
    },
    /// Move a scheduled window to new times
    Reschedule {
        /// The window's id (see `tangazo window list`)
        id: i64,
        /// The new start (in the future)
        #[arg(long, value_name = "TIME")]
        start: String,
        /// The new end (after the start)
        #[arg(long, value_name = "TIME")]
        end: String,
        /// Zone for the new times [default: the window's zone]
        #[arg(long)]
        zone: Option<String>,
    },
    /// Move the end of a scheduled or running window (an overrun, or an early finish planned)
    Extend {
        /// The window's id (see `tangazo window list`)
        id: i64,
        /// The new end
        #[arg(long, value_name = "TIME")]
        end: String,
        /// Zone for the new end [default: the window's zone]
        #[arg(long)]
        zone: Option<String>,
    },
    /// Cancel a scheduled window; those already told are told it is off
    Cancel {
        /// The window's id (see `tangazo window list`)
        id: i64,
        /// Why, in a sentence those told will read (at most 500 characters)
        #[arg(long)]
        reason: Option<String>,
        /// The reason in Swahili, for Swahili readers (the English one is used where absent)
        #[arg(long, requires = "reason")]
        reason_sw: Option<String>,
    },
    /// Confirm that a running window's work is over: the all-clear goes out
    Complete {
        /// The window's id (see `tangazo window list`)
        id: i64,
    },
}

fn zone_arg(zone: &Option<String>, default: Zone) -> CliResult<Zone> {
    match zone {
        Some(z) => z.parse().map_err(bad_field("--zone")),
        None => Ok(default),
    }
}

fn instant_arg(text: &str, zone: Zone, flag: &'static str) -> CliResult<DateTime<Utc>> {
    parse_instant(text, zone).map_err(bad_field(flag))
}

async fn load(ctx: &Ctx, id: i64) -> CliResult<(crate::storage::Store, Window)> {
    let store = ctx.existing_store().await?;
    match store.window(WindowId(id)).await {
        Ok(w) => Ok((store, w)),
        Err(e @ StoreError::NoSuchWindow(_)) => Err(bad_input(e)),
        Err(e) => Err(e.into()),
    }
}

pub async fn run(ctx: &Ctx, command: WindowCommand) -> CliResult {
    let now = ctx.now();
    match command {
        WindowCommand::Add {
            title,
            title_sw,
            description,
            description_sw,
            components,
            start,
            end,
            zone,
            auto_complete,
        } => {
            let zone = zone_arg(&zone, ctx.config.default_zone)?;
            let starts_at = instant_arg(&start, zone, "--start")?;
            let ends_at = instant_arg(&end, zone, "--end")?;
            let schedule = Schedule::new(starts_at, ends_at).map_err(in_zone(zone))?;
            let components = parse_components(ctx, &components)?;
            let new = NewWindow {
                title: Localized {
                    en: title,
                    sw: title_sw,
                },
                description: Localized {
                    en: description,
                    sw: description_sw,
                },
                components,
                schedule,
                zone,
                auto_complete,
            }
            .validate(now)
            .map_err(in_zone(zone))?;
            let store = ctx.store().await?;
            let w = store.create_window(new, now, &ctx.actor).await?;
            let plan = plan_of(ctx, &store, &w).await?;
            if ctx.cli_json {
                let mut v = window_json(&w);
                v["cannot_meet_deadline"] = serde_json::to_value(late_only(&plan)).context("encoding the plan")?;
                ctx.print_json(&v)?;
            } else {
                outln!("{}", w.id);
            }
            warn_late(&plan);
            Ok(())
        }
        WindowCommand::Edit {
            id,
            title,
            title_sw,
            description,
            description_sw,
            components,
        } => {
            let (store, w) = load(ctx, id).await?;
            let wording = title.is_some() || title_sw.is_some() || description.is_some() || description_sw.is_some();
            if let Some(list) = components {
                if wording {
                    return Err(bad_input(anyhow::anyhow!(
                        "--components is a new revision and a wording fix is not: run `window edit` once for each"
                    )));
                }
                let next = w
                    .change_components(parse_components(ctx, &list)?, now)
                    .map_err(in_zone(w.zone))?;
                return change(ctx, &store, &w, next).await;
            }
            let title = Localized {
                en: title.unwrap_or_else(|| w.title.en.clone()),
                sw: title_sw.or_else(|| w.title.sw.clone()),
            };
            let description = Localized {
                en: description.unwrap_or_else(|| w.description.en.clone()),
                sw: description_sw.or_else(|| w.description.sw.clone()),
            };
            let next = w.edit_text(title, description).map_err(|e| match e {
                crate::domain::WindowError::MissingTitle => bad_field("--title")(e),
                e => bad_input(e),
            })?;
            store.save_text(&w, &next, &ctx.actor, now).await?;
            if ctx.cli_json {
                return ctx.print_json(&window_json(&next));
            }
            outln!(
                "window {} edited (still revision {}; nobody is re-notified)",
                next.id,
                next.revision
            );
            Ok(())
        }
        WindowCommand::List => {
            let store = ctx.existing_store().await?;
            let windows = store.windows().await?;
            if ctx.cli_json {
                return ctx.print_json(&windows.iter().map(window_json).collect::<Vec<_>>());
            }
            if windows.is_empty() {
                outln!("no windows yet: add one with `tangazo window add`");
                return Ok(());
            }
            outln!(
                "{:>4}  {:<11}  {:>3}  {:<28}  {:<28}  title",
                "id",
                "status",
                "rev",
                "start",
                "end"
            );
            for w in &windows {
                outln!(
                    "{:>4}  {:<11}  {:>3}  {:<28}  {:<28}  {}",
                    w.id.0,
                    w.status.as_str(),
                    w.revision,
                    format_instant(w.schedule.starts_at(), w.zone, Locale::En, true),
                    format_instant(w.schedule.ends_at(), w.zone, Locale::En, true),
                    w.title.en
                );
            }
            Ok(())
        }
        WindowCommand::Show { id } => {
            let (store, w) = load(ctx, id).await?;
            let history = store.history(w.id).await?;
            let plan = plan_of(ctx, &store, &w).await?;
            let paused = store.paused_windows().await?.into_iter().find(|p| p.window == w.id.0);
            if ctx.cli_json {
                let mut v = window_json(&w);
                v["history"] = serde_json::to_value(&history).context("encoding the history")?;
                v["plan"] = serde_json::to_value(&plan).context("encoding the plan")?;
                v["paused"] = serde_json::to_value(&paused).context("encoding the pause")?;
                return ctx.print_json(&v);
            }
            let when = |t| format_instant(t, w.zone, Locale::En, true);
            outln!("window {}: {}", w.id, w.title.en);
            if let Some(sw) = &w.title.sw {
                outln!("  title (sw)   {sw}");
            }
            outln!("  status       {} (revision {})", w.status, w.revision);
            outln!(
                "  start        {}  ({})",
                when(w.schedule.starts_at()),
                w.schedule.starts_at().to_rfc3339()
            );
            outln!(
                "  end          {}  ({})",
                when(w.schedule.ends_at()),
                w.schedule.ends_at().to_rfc3339()
            );
            outln!("  zone         {}", w.zone);
            outln!(
                "  components   {}",
                w.components
                    .iter()
                    .map(ComponentId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            outln!(
                "  completes    {}",
                if w.auto_complete {
                    "automatically at the end"
                } else {
                    "when an operator confirms"
                }
            );
            if let Some(r) = &w.cancel_reason {
                outln!("  reason       {}", r.en);
                if let Some(sw) = &r.sw {
                    outln!("  reason (sw)  {sw}");
                }
            }
            for (label, text) in [
                ("description", Some(&w.description.en)),
                ("description (sw)", w.description.sw.as_ref()),
            ] {
                if let Some(text) = text.filter(|t| !t.trim().is_empty()) {
                    outln!("  {label}:");
                    for line in text.lines() {
                        outln!("    {line}");
                    }
                }
            }
            if w.overrun(now) {
                outln!("  ALARM        past its planned end and not confirmed complete");
            }
            if let Some(p) = paused {
                outln!(
                    "  PAUSED       since {} by {}: no daemon sends its deliveries until `tangazo deliveries resume --window {}`",
                    p.paused_at.to_rfc3339(),
                    p.actor,
                    w.id
                );
            }
            print_plan(&w, &plan)?;
            outln!("history:");
            for h in history {
                outln!(
                    "  r{:<3} {}  {:<12} by {:<12} {}",
                    h.revision,
                    h.at.to_rfc3339(),
                    h.action,
                    h.actor,
                    h.details
                );
            }
            Ok(())
        }
        WindowCommand::Reschedule { id, start, end, zone } => {
            let (store, w) = load(ctx, id).await?;
            let zone = zone_arg(&zone, w.zone)?;
            let schedule = Schedule::new(instant_arg(&start, zone, "--start")?, instant_arg(&end, zone, "--end")?)
                .map_err(in_zone(zone))?;
            let next = w.reschedule(schedule, now).map_err(in_zone(zone))?;
            change(ctx, &store, &w, next).await
        }
        WindowCommand::Extend { id, end, zone } => {
            let (store, w) = load(ctx, id).await?;
            let zone = zone_arg(&zone, w.zone)?;
            let next = w
                .extend(instant_arg(&end, zone, "--end")?, now)
                .map_err(in_zone(zone))?;
            change(ctx, &store, &w, next).await
        }
        WindowCommand::Cancel { id, reason, reason_sw } => {
            let (store, w) = load(ctx, id).await?;
            let reason = reason.map(|en| Localized { en, sw: reason_sw });
            let next = w.cancel(reason, now).map_err(in_zone(w.zone))?;
            change(ctx, &store, &w, next).await
        }
        WindowCommand::Complete { id } => {
            let (store, w) = load(ctx, id).await?;
            let next = w.complete(now).map_err(bad_input)?;
            change(ctx, &store, &w, next).await
        }
    }
}

async fn change(ctx: &Ctx, store: &crate::storage::Store, before: &Window, after: Window) -> CliResult {
    let superseded = store.save_change(before, &after, &ctx.actor, ctx.now()).await?;
    let plan = plan_of(ctx, store, &after).await?;
    warn_late(&plan);
    if ctx.cli_json {
        let mut v = window_json(&after);
        v["superseded_deliveries"] = json!(superseded);
        v["cannot_meet_deadline"] = serde_json::to_value(late_only(&plan)).context("encoding the plan")?;
        return ctx.print_json(&v);
    }
    outln!(
        "window {} is now {} (revision {}); {} unsent deliveries of earlier revisions superseded",
        after.id,
        after.status,
        after.revision,
        superseded
    );
    Ok(())
}

/// Every fan-out the window still owes, paced at the configured capacity.
async fn plan_of(ctx: &Ctx, store: &Store, w: &Window) -> CliResult<Vec<FanOutPlan>> {
    let sizes = store.all_audience_sizes().await?;
    let size_of = |a| sizes.get(&a).cloned().unwrap_or_else(AudienceSize::new);
    let capacity = Capacity::of_first_backends(&ctx.config.first_backends());
    Ok(window_plan(w, &ctx.config.policy, &size_of, &capacity, ctx.now()))
}

fn late_only(plan: &[FanOutPlan]) -> Vec<&FanOutPlan> {
    plan.iter().filter(|p| !p.feasible()).collect()
}

/// Each fan-out the capacity cannot finish by its deadline, on standard error.
fn warn_late(plan: &[FanOutPlan]) {
    for p in late_only(plan) {
        errln!("warning: {}", late_plan_line(p));
    }
}

/// A fan-out that misses its deadline, with the numbers.
pub(super) fn late_plan_line(p: &FanOutPlan) -> String {
    format!(
        "the {} notice to {} {} cannot all go out before its deadline {}: paced at {} of the configured rates it needs {} from {}, so the last would land at {}, {} too late; what is not sent by then expires (raise the backends' rate, or add one)",
        p.notice,
        p.total(),
        if p.audience == "customer" {
            "customer deliveries"
        } else {
            "biller deliveries"
        },
        p.deadline.to_rfc3339(),
        planned_share(),
        span_text(p.end - p.start),
        p.start.to_rfc3339(),
        p.end.to_rfc3339(),
        span_text(-p.slack()),
    )
}

/// The share of each backend's rate that slots are planned at, as a percentage.
fn planned_share() -> String {
    format!("{:.0} %", crate::planner::pace::PLANNED_SHARE * 100.0)
}

fn span_text(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// The plan as `window show` prints it: per notice, when its fan-out begins and is expected to
/// end, its deadline and the slack.
fn print_plan(w: &Window, plan: &[FanOutPlan]) -> CliResult {
    if plan.is_empty() {
        return Ok(());
    }
    let when = |t| format_instant(t, w.zone, Locale::En, true);
    outln!(
        "plan (paced at {} of the configured rates; times in {}):",
        planned_share(),
        w.zone
    );
    outln!(
        "  {:<14} {:<9} {:>10}  {:<28} {:<28} {:<28} slack",
        "notice",
        "audience",
        "deliveries",
        "fan-out starts",
        "expected end",
        "deadline"
    );
    for p in plan {
        let slack = p.slack();
        let slack = if slack < chrono::TimeDelta::zero() {
            format!("MISSES by {}", span_text(-slack))
        } else {
            span_text(slack)
        };
        outln!(
            "  {:<14} {:<9} {:>10}  {:<28} {:<28} {:<28} {}{}",
            p.notice,
            p.audience,
            p.total(),
            when(p.start),
            when(p.end),
            when(p.deadline),
            slack,
            if p.early { "" } else { " (from its moment)" }
        );
    }
    Ok(())
}

/// A window error as the operator reads it: times in the zone they typed them in, and the flag
/// at fault named.
fn in_zone(zone: Zone) -> impl Fn(WindowError) -> super::Failure {
    move |e| {
        let at = |t| format_instant(t, zone, Locale::En, true);
        match e {
            WindowError::EndNotAfterStart { start, end } => {
                bad_field("--end")(format!("end {} is not after start {}", at(end), at(start)))
            }
            WindowError::StartInPast { start, now } => {
                bad_field("--start")(format!("start {} is not in the future (now is {})", at(start), at(now)))
            }
            WindowError::EndInPast { end, now } => {
                bad_field("--end")(format!("end {} is not in the future (now is {})", at(end), at(now)))
            }
            WindowError::MissingTitle => bad_field("--title")(e),
            WindowError::NoComponents => bad_field("--components")(e),
            e => bad_input(e),
        }
    }
}

fn parse_components(ctx: &Ctx, list: &str) -> CliResult<Vec<ComponentId>> {
    let mut out = Vec::new();
    for c in split_list(list) {
        let id: ComponentId = c.parse().map_err(bad_field("--components"))?;
        if !ctx.config.knows(&id) {
            let known: Vec<&str> = ctx.config.components.keys().map(ComponentId::as_str).collect();
            return Err(bad_field("--components")(format!(
                "unknown component '{id}' (configured: {})",
                known.join(", ")
            )));
        }
        out.push(id);
    }
    Ok(out)
}

pub fn window_json(w: &Window) -> serde_json::Value {
    json!({
        "id": w.id.0,
        "title": w.title.en,
        "title_sw": w.title.sw,
        "description": w.description.en,
        "description_sw": w.description.sw,
        "status": w.status.as_str(),
        "revision": w.revision,
        "starts_at": w.schedule.starts_at().to_rfc3339(),
        "ends_at": w.schedule.ends_at().to_rfc3339(),
        "zone": w.zone.name(),
        "components": w.components.iter().map(ComponentId::as_str).collect::<Vec<_>>(),
        "auto_complete": w.auto_complete,
        "cancel_reason": w.cancel_reason.as_ref().map(|r| &r.en),
        "cancel_reason_sw": w.cancel_reason.as_ref().and_then(|r| r.sw.as_ref()),
        "created_at": w.created_at.to_rfc3339(),
    })
}
