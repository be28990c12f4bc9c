//! The clock, injected everywhere time matters. `--now` on the command line fixes it (or, for
//! the daemon, starts it at that instant and lets it run), so every time-dependent behaviour can
//! be rehearsed and tested without waiting.

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    /// Always the same instant: `run-once --now …`.
    Fixed(DateTime<Utc>),
    /// The system clock shifted so that it read `origin` when the process started.
    Shifted(TimeDelta),
}

impl Clock {
    /// A clock that reads `origin` now and then advances in real time.
    pub fn starting_at(origin: DateTime<Utc>) -> Clock {
        Clock::Shifted(origin - Utc::now())
    }

    /// Whether waiting lets this clock reach a later instant (every clock but a fixed one).
    pub fn advances(&self) -> bool {
        !matches!(self, Clock::Fixed(_))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Fixed(t) => *t,
            Clock::Shifted(d) => Utc::now() + *d,
        }
    }
}
