//! `tangazo serve`: the HTTP side alone (the daemon runs it too, with `--listen`).

use std::net::SocketAddr;

use super::{CliResult, Ctx, bad_field};
use crate::channels::registry::BackendConfig;
use crate::clock::Clock;
use crate::shutdown::{CancellationToken, on_signals};

/// The address to listen on: the flag, else `http.listen`.
pub fn listen_addr(ctx: &Ctx, flag: Option<&str>) -> CliResult<Option<SocketAddr>> {
    match flag {
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| bad_field("--listen")(format!("'{text}' is not an address and port like 127.0.0.1:8080"))),
        None => Ok(ctx.config.http.listen),
    }
}

pub async fn run(ctx: &Ctx, listen: Option<&str>, print_callback_urls: bool, fixed_now: bool) -> CliResult {
    // Templates that do not all render stop the server before it opens anything.
    let parts = ctx.parts()?;
    let store = ctx.store().await?;
    if print_callback_urls {
        return print_urls(ctx, &store, listen).await;
    }
    let Some(addr) = listen_addr(ctx, listen)? else {
        return Err(bad_field("--listen")(
            "give an address to listen on (--listen 127.0.0.1:8080, or http.listen in the configuration)",
        ));
    };
    let stop = CancellationToken::new();
    on_signals(&stop);
    let clock = if fixed_now {
        Clock::starting_at(ctx.now())
    } else {
        Clock::System
    };
    let listener = crate::http::bind(addr).await.map_err(super::bad_input)?;
    let state =
        crate::http::AppState::new(store.clone(), clock, ctx.config.clone(), parts.renderer, parts.senders).await?;
    crate::http::serve(listener, state, stop).await?;
    store.close().await;
    Ok(())
}

async fn print_urls(ctx: &Ctx, store: &crate::storage::Store, listen: Option<&str>) -> CliResult {
    let base = match (&ctx.config.http.public_url, listen_addr(ctx, listen)?) {
        (Some(url), _) => url.as_str().trim_end_matches('/').to_owned(),
        (None, Some(addr)) => format!("http://{addr}"),
        (None, None) => "https://YOUR-HOST".to_owned(),
    };
    let secret = crate::http::callback_path_secret(store).await?;
    let mut any = false;
    for (name, sender) in &ctx.config.senders {
        match &sender.backend {
            BackendConfig::AfricasTalking(_) => {
                any = true;
                outln!("{name} (Africa's Talking):");
                outln!("  delivery reports  {base}/callbacks/{secret}/africastalking/{name}/delivery");
                outln!("  incoming messages {base}/callbacks/{secret}/africastalking/{name}/inbound");
            }
            BackendConfig::Twilio(_) => {
                any = true;
                outln!("{name} (Twilio; requests are checked by X-Twilio-Signature):");
                outln!("  status callback   {base}/callbacks/twilio/{name}/status");
                outln!("  incoming messages {base}/callbacks/twilio/{name}/inbound");
            }
            _ => {}
        }
    }
    if !any {
        outln!("no africastalking or twilio sender is configured: no callback URLs");
    }
    Ok(())
}
