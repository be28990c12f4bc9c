//! One stop signal for every long-running part: a [`CancellationToken`] that SIGINT or SIGTERM
//! cancels. Each loop checks it between units of work (a tick, a batch), so in-flight sends
//! finish and unsent claims return to the queue.

pub use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGINT or SIGTERM. The handlers are in place when this returns (call it
/// inside the runtime); a task waits for them.
pub fn on_signals(token: &CancellationToken) {
    let token = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listeners = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
        tokio::spawn(async move {
            match listeners {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                }
                (int, term) => {
                    let e = int.err().or(term.err()).map(|e| e.to_string()).unwrap_or_default();
                    tracing::error!(error = %e, "cannot listen for SIGINT and SIGTERM; Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            // Cancel first: nothing that follows (a log line to a closed stderr) can hold up
            // the stop.
            token.cancel();
            tracing::info!("stop requested: finishing the current batch");
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
        tracing::info!("stop requested: finishing the current batch");
    });
}
