//! One integration test binary: the store conformance suite (SQLite and PostgreSQL), the
//! scheduler end to end, and the command line as a user runs it.

// Test code: unwrap is the clearest way to say "this must hold".
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod broadcast;
mod cli;
mod cluster;
mod dispatch;
mod helpers;
mod http;
mod import;
mod ledger;
mod openapi;
mod pacing;
mod providers;
mod readme;
mod scheduler;
mod schema;
mod sms_sink;
mod smtp;
mod store;
mod tidy;
mod webhooks;
