//! One integration test binary: the store conformance suite (SQLite and PostgreSQL), the
//! scheduler end to end, and the command line as a user runs it.

mod broadcast;
mod cli;
mod dispatch;
mod helpers;
mod import;
mod scheduler;
mod store;
