//! Tangazo: tells millions of people, in their language and time zone, that a service is going
//! down for planned maintenance, and when it is back.
//!
//! See ARCHITECTURE.md for the codemap and the invariants.

pub mod app;
pub mod broadcast;
pub mod channels;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod http;
pub mod import;
pub mod planner;
pub mod render;
pub mod scheduler;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
