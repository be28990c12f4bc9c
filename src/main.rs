//! The `tangazo` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;

#[allow(clippy::print_stderr)] // the binary reports a failure to start before the CLI exists
fn main() -> ExitCode {
    let cli = tangazo::cli::Cli::parse();
    tangazo::telemetry::init(matches!(
        cli.command,
        tangazo::cli::Command::Daemon { .. } | tangazo::cli::Command::Serve { .. }
    ));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(tangazo::cli::run(cli))
}
