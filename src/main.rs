//! The `tangazo` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;

#[allow(clippy::print_stderr)] // the binary reports a failure to start before the CLI exists
fn main() -> ExitCode {
    cap_malloc_arenas();
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

/// glibc's malloc gives every thread that allocates an arena of its own, up to eight per core,
/// and keeps what was freed in each. Tangazo's threads (the runtime's workers, one per SQLite
/// connection, the blocking pool) each fill one, and a fan-out of 1,000,000 emails peaked at
/// 67–68 MiB at glibc's default against 55 MiB with one arena per core (at least two), at the
/// same speed (BENCHMARKS.md, *Peak RSS and glibc's arenas*). An operator's own
/// `MALLOC_ARENA_MAX` is left to glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // the one call into the C library; see ARCHITECTURE.md, *Departures*
fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` sets one of the allocator's parameters and touches no memory of ours;
    // it runs first thing in `main`, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}
