//! The `webhook` backend: billers' subscribed endpoints receive each event in the Standard
//! Webhooks envelope, signed.
//!
//! `guard` keeps every request on public addresses (checked at registration and at connect
//! time); `sign` makes the signatures.

pub mod guard;
pub mod sign;
