//! `tangazo billers …`: billers (and partners) who use the API — add or update one and issue
//! its API token (printed once, stored only as a hash), rotate the token, list them.

use clap::Subcommand;
use serde_json::json;

use super::{CliResult, Ctx, bad_field, bad_input};
use crate::domain::{Audience, Channel, ComponentId, EmailAddress, Locale, PhoneNumber, Profile, Zone};
use crate::http::{new_token_secret, token_text};

#[derive(Debug, Subcommand)]
pub enum BillersCommand {
    /// Add a biller (or update the one with this email) and print its API token, shown only now
    ///
    /// The token (`tgz_…`, 256 random bits) is the biller's `Authorization: Bearer` for the
    /// /v1/subscriptions and /v1/events API. Only its hash is kept: a lost token is replaced
    /// with `tangazo billers rotate-token`. Updating a biller issues a new token and revokes
    /// the old one, unless --keep-token.
    #[command(verbatim_doc_comment)]
    Add {
        /// The biller's name, as notices address it (e.g. "Kenya Power")
        name: String,
        /// Where the biller's email notices go; also who it is, for updates
        #[arg(long)]
        email: String,
        /// A mobile number for SMS notices
        #[arg(long)]
        phone: Option<String>,
        /// en or sw
        #[arg(long, default_value = "en")]
        locale: String,
        /// The biller's zone [default: the default zone]
        #[arg(long)]
        zone: Option<String>,
        /// Only windows affecting these components, comma-separated [default: all]
        #[arg(long, value_name = "A,B")]
        components: Option<String>,
        /// Channels, comma-separated [default: email and webhook, and sms with --phone]
        #[arg(long, value_name = "A,B")]
        channels: Option<String>,
        /// When updating, keep the biller's current token (print none)
        #[arg(long)]
        keep_token: bool,
    },
    /// Issue a new API token for a biller, revoking the old one at once; prints it once
    RotateToken {
        /// The biller: email address, phone number or recipient id
        #[arg(value_name = "EMAIL|PHONE|ID")]
        biller: String,
    },
    /// List billers and whether each holds an API token
    List,
}

pub async fn run(ctx: &Ctx, command: BillersCommand) -> CliResult {
    match command {
        BillersCommand::Add {
            name,
            email,
            phone,
            locale,
            zone,
            components,
            channels,
            keep_token,
        } => {
            let email = EmailAddress::parse(&email).map_err(bad_field("--email"))?;
            let phone = phone
                .as_deref()
                .map(PhoneNumber::parse)
                .transpose()
                .map_err(bad_field("--phone"))?;
            let locale: Locale = locale.parse().map_err(bad_field("--locale"))?;
            let zone: Zone = match zone {
                Some(z) => z.parse().map_err(bad_field("--zone"))?,
                None => ctx.config.default_zone,
            };
            let mut wanted = Vec::new();
            for c in crate::domain::split_list(components.as_deref().unwrap_or_default()) {
                let id: ComponentId = c.parse().map_err(bad_field("--components"))?;
                if !ctx.config.knows(&id) {
                    return Err(bad_field("--components")(format!("unknown component '{id}'")));
                }
                wanted.push(id);
            }
            // A biller hears by email and by webhook (its subscriptions, or `GET /v1/events`).
            let channels: Vec<Channel> = match channels {
                Some(text) => crate::domain::split_list(&text)
                    .map(|c| c.parse::<Channel>().map_err(bad_field("--channels")))
                    .collect::<CliResult<_>>()?,
                None => {
                    let mut list = vec![Channel::Email, Channel::Webhook];
                    if phone.is_some() {
                        list.insert(0, Channel::Sms);
                    }
                    list
                }
            };
            let profile = Profile::new(
                Audience::Biller,
                &name,
                phone,
                Some(email.clone()),
                locale,
                zone,
                wanted,
                channels,
                false,
            )
            .map_err(|e| bad_input(anyhow::anyhow!(e)))?;
            let store = ctx.store().await?;
            let existing = store.biller_by_email(email.as_str()).await?;
            let id = store
                .save_biller(existing.as_ref().map(|r| r.id), &profile, ctx.now())
                .await
                .map_err(|e| match e {
                    crate::storage::StoreError::Database(_) => bad_input(anyhow::anyhow!(
                        "cannot save the biller: its phone number or email belongs to another recipient"
                    )),
                    e => e.into(),
                })?;
            let verb = if existing.is_some() { "updated" } else { "added" };
            if keep_token && existing.is_some() {
                if ctx.cli_json {
                    return ctx.print_json(&json!({"id": id.0, "name": profile.name, "saved": verb}));
                }
                outln!("biller {id} {verb}: {}; its API token is unchanged", profile.name);
                return Ok(());
            }
            let token = issue(ctx, &store, id).await?;
            if ctx.cli_json {
                return ctx.print_json(&json!({"id": id.0, "name": profile.name, "saved": verb, "token": token}));
            }
            outln!("biller {id} {verb}: {}", profile.name);
            outln!("API token (shown only now; keep it secret): {token}");
            Ok(())
        }
        BillersCommand::RotateToken { biller } => {
            let store = ctx.existing_store().await?;
            let who = super::ops::find_recipient(&store, &biller).await?;
            if who.profile.kind != Audience::Biller {
                return Err(bad_field("biller")(format!(
                    "recipient {} is a customer, not a biller",
                    who.id
                )));
            }
            let token = issue(ctx, &store, who.id).await?;
            if ctx.cli_json {
                return ctx.print_json(&json!({"id": who.id.0, "token": token}));
            }
            outln!(
                "new API token for biller {} (shown only now; the old one no longer works): {token}",
                who.id
            );
            Ok(())
        }
        BillersCommand::List => {
            let store = ctx.existing_store().await?;
            let billers = store.billers().await?;
            if ctx.cli_json {
                let list: Vec<_> = billers
                    .iter()
                    .map(|(r, has_token)| {
                        json!({
                            "id": r.id.0,
                            "name": r.profile.name,
                            "email": r.profile.email.as_ref().map(|e| e.as_str()),
                            "token": has_token,
                        })
                    })
                    .collect();
                return ctx.print_json(&list);
            }
            outln!("{:>6}  {:<30}  {:<34}  token", "id", "name", "email");
            for (r, has_token) in &billers {
                outln!(
                    "{:>6}  {:<30}  {:<34}  {}",
                    r.id,
                    r.profile.name,
                    r.profile.email.as_ref().map_or("", |e| e.as_str()),
                    if *has_token { "yes" } else { "no" }
                );
            }
            Ok(())
        }
    }
}

async fn issue(ctx: &Ctx, store: &crate::storage::Store, id: crate::domain::RecipientId) -> CliResult<String> {
    let new = new_token_secret().map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    let token_id = store.issue_api_token(id, &new.hash, ctx.now()).await?;
    Ok(token_text(token_id, &new.secret))
}
