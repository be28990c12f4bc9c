//! One stop signal for every long-running part: a [`CancellationToken`] that SIGINT or SIGTERM
//! cancels. Each loop checks it between units of work (a tick, a batch), so in-flight sends
//! finish and unsent claims return to the queue.

pub use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGINT or SIGTERM. Spawns a task: call it inside the runtime.
pub fn on_signals(token: &CancellationToken) {
    let token = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = term.recv() => {},
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("stop requested: finishing the current batch");
        token.cancel();
    });
}
