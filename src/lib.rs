//! Tangazo: tells millions of people, in their language and time zone, that a service is going
//! down for planned maintenance, and when it is back.
//!
//! See ARCHITECTURE.md for the codemap and the invariants.

pub mod domain;
pub mod config;
pub mod planner;
pub mod render;
pub mod scheduler;
pub mod storage;
pub mod channels;
pub mod dispatch;
pub mod clock;
pub mod import;
pub mod shutdown;
pub mod cli;
pub mod telemetry;
