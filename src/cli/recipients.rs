//! `tangazo recipients …`: import customers and billers, list, count, opt out and back in.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use super::{CliResult, Ctx, bad_field, bad_input};
use crate::domain::{Audience, EmailAddress, PhoneNumber, RecipientId};
use crate::import::{ImportError, RowRules, import_csv, validate_csv};

#[derive(Debug, Subcommand)]
pub enum RecipientsCommand {
    /// Import (or update, by phone, else email) recipients from a CSV file
    ///
    /// Header names pick the columns: kind,name,phone,email,locale,zone,components,channels
    /// and optionally opt_out; other columns are ignored. Lists use `;`. kind (customer or
    /// biller), name and a phone or an email are required; an empty locale means en, an empty
    /// zone the default zone. Bad rows are reported by line and skipped (exit 0). Re-importing
    /// updates by natural key and never clears an opt-out.
    #[command(verbatim_doc_comment)]
    Import {
        /// The CSV file (UTF-8; a header line names the columns)
        file: PathBuf,
        /// Import nothing, and exit 2, if any row is bad
        #[arg(long)]
        strict: bool,
    },
    /// List recipients in id order
    List {
        /// How many to list
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Start after this id (paging)
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// customer or biller
        #[arg(long)]
        kind: Option<String>,
    },
    /// Count recipients by kind and opt-out
    Count,
    /// Stop sending to this phone number or email address
    OptOut {
        /// The recipient's phone number (any form import accepts) or email address
        phone_or_email: String,
    },
    /// Resume sending to this phone number or email address
    OptIn {
        /// The recipient's phone number (any form import accepts) or email address
        phone_or_email: String,
    },
    /// What happened to a recipient from outside: opt-outs (by SMS reply, by an email's
    /// unsubscribe link, here) and opt-ins, when and how
    History {
        /// The recipient's phone number, email address or id
        #[arg(value_name = "PHONE|EMAIL|ID")]
        recipient: String,
    },
}

/// Errors are listed in full up to this many; the rest are counted.
const ERRORS_SHOWN: usize = 200;

pub async fn run(ctx: &Ctx, command: RecipientsCommand) -> CliResult {
    let rules = RowRules {
        default_zone: ctx.config.default_zone,
        components: &ctx.config.components,
    };
    match command {
        RecipientsCommand::Import { file, strict } => {
            let open = || {
                std::fs::File::open(&file)
                    .map(std::io::BufReader::new)
                    .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", file.display())))
            };
            let import_error = |e: ImportError| match e {
                ImportError::Header(_) | ImportError::NotText(_) => {
                    bad_input(anyhow::anyhow!("{}: {e}", file.display()))
                }
                e => e.into(),
            };
            if strict {
                let report = validate_csv(open()?, &rules).map_err(import_error)?;
                if !report.errors.is_empty() {
                    for e in report.errors.iter().take(ERRORS_SHOWN) {
                        errln!("{}: {e}", file.display());
                    }
                    return Err(bad_input(anyhow::anyhow!(
                        "{}: {} of {} rows are bad; nothing was imported (--strict)",
                        file.display(),
                        report.rejected,
                        report.rows
                    )));
                }
            }
            // A file that cannot be read as recipients is refused before any database is opened
            // (or created).
            crate::import::Rows::new(open()?, &rules).map_err(import_error)?;
            let store = ctx.store().await?;
            let started = std::time::Instant::now();
            let verbose = std::io::stderr().is_terminal() || !ctx.cli_json;
            let mut last_note = 0u64;
            let mut progress = |rows: u64| {
                if verbose && rows >= last_note + 100_000 {
                    last_note = rows;
                    errln!(
                        "… {rows} rows read ({:.0} rows/s)",
                        rows as f64 / started.elapsed().as_secs_f64().max(1e-3)
                    );
                }
            };
            let report = import_csv(&store, open()?, &rules, ctx.now(), &mut progress)
                .await
                .map_err(import_error)?;
            for e in report.errors.iter().take(ERRORS_SHOWN) {
                errln!("{}: {e}", file.display());
            }
            if report.errors.len() > ERRORS_SHOWN {
                errln!(
                    "{}: … and {} more bad rows",
                    file.display(),
                    report.errors.len() - ERRORS_SHOWN
                );
            }
            if ctx.cli_json {
                return ctx.print_json(&json!({
                    "rows": report.rows, "imported": report.imported, "updated": report.updated,
                    "unchanged": report.unchanged, "rejected": report.rejected, "errors": report.errors,
                }));
            }
            outln!(
                "{} rows: {} imported, {} updated, {} unchanged, {} rejected ({:.1} s)",
                report.rows,
                report.imported,
                report.updated,
                report.unchanged,
                report.rejected,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        RecipientsCommand::List { limit, after, kind } => {
            let kind = kind
                .map(|k| k.parse::<Audience>())
                .transpose()
                .map_err(bad_field("--kind"))?;
            let store = ctx.existing_store().await?;
            let page = store.recipients_page(kind, RecipientId(after), limit.max(0)).await?;
            for (id, why) in &page.unreadable {
                errln!("warning: recipient {id} cannot be read: {why}");
            }
            if ctx.cli_json {
                let rows: Vec<_> = page
                    .recipients
                    .iter()
                    .map(|r| {
                        let p = &r.profile;
                        json!({
                            "id": r.id.0, "kind": p.kind, "name": p.name,
                            "phone": p.phone.as_ref().map(|x| x.as_str()), "email": p.email.as_ref().map(|x| x.as_str()),
                            "locale": p.locale, "zone": p.zone.name(),
                            "components": p.components.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                            "channels": p.effective_channels(), "opt_out": p.opt_out,
                        })
                    })
                    .collect();
                return ctx.print_json(&rows);
            }
            outln!(
                "{:>8}  {:<8}  {:<24}  {:<15}  {:<28}  {:<2}  {:<16}  flags",
                "id",
                "kind",
                "name",
                "phone",
                "email",
                "lc",
                "zone"
            );
            for r in &page.recipients {
                let p = &r.profile;
                outln!(
                    "{:>8}  {:<8}  {:<24}  {:<15}  {:<28}  {:<2}  {:<16}  {}",
                    r.id.0,
                    p.kind.as_str(),
                    truncate(&p.name, 24),
                    p.phone.as_ref().map(|x| x.as_str()).unwrap_or("-"),
                    truncate(p.email.as_ref().map(|x| x.as_str()).unwrap_or("-"), 28),
                    p.locale.as_str(),
                    p.zone.name(),
                    if p.opt_out { "opted-out" } else { "" }
                );
            }
            let read = page.recipients.len() + page.unreadable.len();
            if let Some(last) = page.last.filter(|_| read as i64 == limit) {
                outln!("… more with --after {last}");
            }
            Ok(())
        }
        RecipientsCommand::Count => {
            let store = ctx.existing_store().await?;
            let counts = store.recipient_counts().await?;
            if ctx.cli_json {
                let rows: Vec<_> = counts
                    .iter()
                    .map(|(k, o, n)| json!({"kind": k, "opt_out": o, "count": n}))
                    .collect();
                return ctx.print_json(&rows);
            }
            let total: i64 = counts.iter().map(|c| c.2).sum();
            for (kind, opted_out, n) in &counts {
                outln!(
                    "{kind:<9} {:<12} {n:>10}",
                    if *opted_out { "opted out" } else { "reachable" }
                );
            }
            outln!("{:<22} {total:>10}", "total");
            Ok(())
        }
        RecipientsCommand::OptOut { phone_or_email } => set_opt_out(ctx, &phone_or_email, true).await,
        RecipientsCommand::OptIn { phone_or_email } => set_opt_out(ctx, &phone_or_email, false).await,
        RecipientsCommand::History { recipient } => {
            let store = ctx.existing_store().await?;
            let who = super::ops::find_recipient(&store, &recipient).await?;
            let history = store.recipient_history(who.id).await?;
            if ctx.cli_json {
                return ctx.print_json(&history);
            }
            outln!(
                "recipient {} ({}): {}",
                who.id,
                who.profile.name,
                if who.profile.opt_out { "opted out" } else { "opted in" }
            );
            if history.is_empty() {
                outln!("  no history");
            }
            for h in &history {
                outln!(
                    "  {}  {:<8} {:<16} {}",
                    h.at.to_rfc3339(),
                    h.action,
                    h.source,
                    h.details
                );
            }
            Ok(())
        }
    }
}

async fn set_opt_out(ctx: &Ctx, who: &str, opt_out: bool) -> CliResult {
    let key = if who.contains('@') {
        EmailAddress::parse(who)
            .map_err(bad_field("PHONE_OR_EMAIL"))?
            .as_str()
            .to_ascii_lowercase()
    } else {
        PhoneNumber::parse(who)
            .map_err(bad_field("PHONE_OR_EMAIL"))?
            .as_str()
            .to_owned()
    };
    let store = ctx.existing_store().await?;
    let details = json!({ "actor": ctx.actor });
    let missing = || bad_input(anyhow::anyhow!("no recipient has the phone or email {key}"));
    if opt_out {
        let done = store
            .opt_out(crate::storage::OptOutBy::Key(&key), "cli", &details, ctx.now())
            .await
            .context("updating the recipient")?
            .ok_or_else(missing)?;
        outln!(
            "{key}: opted out; {} deliveries still queued for it withdrawn",
            done.withdrawn
        );
    } else {
        store
            .opt_in(&key, "cli", &details, ctx.now())
            .await
            .context("updating the recipient")?
            .ok_or_else(missing)?;
        outln!("{key}: opted back in");
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}
