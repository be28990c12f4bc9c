//! Structured logs on stderr. `TANGAZO_LOG` sets the filter (default: `info` for the daemon and
//! `serve`, `warn` for one-shot commands); `TANGAZO_LOG_FORMAT=json` switches to JSON lines. Phone
//! numbers and email addresses are never logged whole (see `PhoneNumber::masked`).

use tracing_subscriber::EnvFilter;

pub fn init(long_running: bool) {
    let default = if long_running { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("TANGAZO_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("TANGAZO_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A closed stderr must not stop anything: a failed log line is dropped, not reported
        // on that same stderr (which would panic).
        .log_internal_errors(false);
    // A second initialisation (tests) is harmless: the first subscriber stays.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
