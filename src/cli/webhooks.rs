//! `tangazo webhooks …`: billers' endpoints — register (the secret is printed once), list,
//! remove, rotate the secret, send a signed test, enable again.

use clap::Subcommand;
use serde_json::json;

use super::{CliResult, Ctx, bad_field, bad_input};
use crate::channels::Endpoint;
use crate::channels::webhook::{configured_guard, guard::Guard, send_test, sign};
use crate::domain::{Audience, ComponentId, EventType, Span};
use crate::storage::NewEndpoint;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint for a biller; prints its id and signing secret (shown only now)
    ///
    /// The URL must be https (http only where the webhook backend's `allow_http` says so) and
    /// resolve to public addresses only: private, loopback, link-local, metadata and other
    /// internal addresses are refused, here and again at every connection.
    #[command(verbatim_doc_comment)]
    Add {
        /// The biller: phone number, email address or recipient id
        #[arg(long, value_name = "PHONE|EMAIL|ID")]
        biller: String,
        /// Where events are POSTed
        #[arg(long)]
        url: String,
        /// Event types, comma-separated (window.announced, window.reminder, window.started,
        /// window.rescheduled, window.cancelled, window.completed) [default: all]
        #[arg(long, value_name = "A,B")]
        events: Option<String>,
        /// Only windows affecting these components, comma-separated [default: all]
        #[arg(long, value_name = "A,B")]
        components: Option<String>,
    },
    /// List endpoints (never their secrets)
    List {
        /// Only this biller's
        #[arg(long, value_name = "PHONE|EMAIL|ID")]
        biller: Option<String>,
    },
    /// Remove an endpoint: nothing more is sent to it (one that has deliveries is kept, disabled)
    Remove {
        /// The endpoint's id (see `tangazo webhooks list`)
        id: i64,
    },
    /// Give an endpoint a new secret; the old one keeps signing beside it for the overlap
    RotateSecret {
        /// The endpoint's id
        id: i64,
        /// How long the old secret still signs (both signatures are sent meanwhile)
        #[arg(long, default_value = "24h")]
        overlap: String,
    },
    /// Send the endpoint a signed `webhook.test` event now and say how it answered
    Test {
        /// The endpoint's id
        id: i64,
    },
    /// Enable an endpoint that was disabled (after a 410, or failing for days)
    Enable {
        /// The endpoint's id
        id: i64,
    },
}

/// The guard of the configured webhook backend (the first one), or the default rules.
fn guard(ctx: &Ctx) -> CliResult<Guard> {
    configured_guard(&ctx.config.senders).map_err(|e| bad_input(anyhow::anyhow!("senders: {e}")))
}

fn list<T: std::str::FromStr>(flag: &'static str, text: Option<&str>) -> CliResult<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    text.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<T>().map_err(bad_field(flag)))
        .collect()
}

pub async fn run(ctx: &Ctx, command: WebhooksCommand) -> CliResult {
    match command {
        WebhooksCommand::Add {
            biller,
            url,
            events,
            components,
        } => {
            let events: Vec<EventType> = list("--events", events.as_deref())?;
            let components: Vec<ComponentId> = list("--components", components.as_deref())?;
            if let Some(unknown) = components.iter().find(|c| !ctx.config.knows(c)) {
                return Err(bad_field("--components")(format!("unknown component '{unknown}'")));
            }
            let url = guard(ctx)?.check_url(&url).await.map_err(bad_field("--url"))?;
            let store = ctx.store().await?;
            let who = super::ops::find_recipient(&store, &biller).await?;
            if who.profile.kind != Audience::Biller {
                return Err(bad_field("--biller")(format!(
                    "recipient {} is a customer, not a biller",
                    who.id
                )));
            }
            let secret = sign::new_secret().map_err(bad_input)?;
            let id = store
                .add_endpoint(
                    &NewEndpoint {
                        recipient: who.id,
                        url: url.to_string(),
                        secret: secret.clone(),
                        events,
                        components,
                    },
                    ctx.now(),
                )
                .await?;
            if ctx.cli_json {
                return ctx.print_json(
                    &json!({"id": id, "biller": who.id.0, "url": url.as_str(), "secret": secret.expose()}),
                );
            }
            outln!("endpoint {id} for biller {} at {url}", who.id);
            outln!("signing secret (shown only now): {}", secret.expose());
            Ok(())
        }
        WebhooksCommand::List { biller } => {
            let store = ctx.existing_store().await?;
            let who = match biller {
                Some(b) => Some(super::ops::find_recipient(&store, &b).await?.id),
                None => None,
            };
            let endpoints = store.endpoints(who).await?;
            if ctx.cli_json {
                return ctx.print_json(&endpoints);
            }
            outln!("{:>4}  {:>6}  {:<9}  {:<40}  filters", "id", "biller", "state", "url");
            for e in &endpoints {
                let filters = [
                    (!e.events.is_empty()).then(|| format!("events {}", e.events.join(","))),
                    (!e.components.is_empty()).then(|| format!("components {}", e.components.join(","))),
                ];
                let filters: Vec<String> = filters.into_iter().flatten().collect();
                outln!(
                    "{:>4}  {:>6}  {:<9}  {:<40}  {}",
                    e.id,
                    e.recipient,
                    if e.disabled.is_some() { "disabled" } else { "enabled" },
                    e.url,
                    if filters.is_empty() {
                        "all".to_owned()
                    } else {
                        filters.join("; ")
                    }
                );
                if let Some(why) = &e.disabled {
                    outln!("        disabled: {why}");
                }
            }
            Ok(())
        }
        WebhooksCommand::Remove { id } => {
            let store = ctx.existing_store().await?;
            if !store.remove_endpoint(id).await? {
                return Err(bad_field("id")(format!("no endpoint has id {id}")));
            }
            outln!("endpoint {id} removed");
            Ok(())
        }
        WebhooksCommand::RotateSecret { id, overlap } => {
            let overlap: Span = overlap.parse().map_err(bad_field("--overlap"))?;
            let store = ctx.existing_store().await?;
            let secret = sign::new_secret().map_err(bad_input)?;
            // The overlap is real time: it is checked against the real clock when signing.
            let until = chrono::Utc::now() + overlap.delta();
            if !store.rotate_endpoint_secret(id, &secret, until).await? {
                return Err(bad_field("id")(format!("no endpoint has id {id}")));
            }
            if ctx.cli_json {
                return ctx.print_json(
                    &json!({"id": id, "secret": secret.expose(), "previous_signs_until": until.to_rfc3339()}),
                );
            }
            outln!(
                "new signing secret for endpoint {id} (shown only now): {}",
                secret.expose()
            );
            outln!("the previous secret also signs until {}", until.to_rfc3339());
            Ok(())
        }
        WebhooksCommand::Enable { id } => {
            let store = ctx.existing_store().await?;
            if !store.set_endpoint_disabled(id, None).await? {
                return Err(bad_field("id")(format!("no endpoint has id {id}")));
            }
            outln!("endpoint {id} enabled");
            Ok(())
        }
        WebhooksCommand::Test { id } => {
            let store = ctx.existing_store().await?;
            let Some((info, secret)) = store.endpoint_with_secret(id).await? else {
                return Err(bad_field("id")(format!("no endpoint has id {id}")));
            };
            let endpoint = Endpoint {
                id,
                url: info.url.clone(),
                secrets: vec![secret],
            };
            let result = Some(
                send_test(
                    guard(ctx)?,
                    endpoint,
                    crate::domain::RecipientId(info.recipient),
                    ctx.now(),
                )
                .await,
            );
            match result {
                Some(Ok(_)) => {
                    outln!("endpoint {id} at {} accepted a signed test event", info.url);
                    Ok(())
                }
                Some(Err(e)) => Err(bad_input(anyhow::anyhow!("endpoint {id} at {}: {e}", info.url))),
                None => Err(bad_input(anyhow::anyhow!("no result"))),
            }
        }
    }
}
