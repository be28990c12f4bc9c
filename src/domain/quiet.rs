//! Quiet hours: the part of the night in a recipient's own zone when nothing routine is sent.
//!
//! Pure: a delivery's slot goes in, the slot it should have comes out. A slot inside quiet
//! hours waits for their end, unless the end is at or past the notice's deadline: then it goes
//! before they began, if that is still ahead, and otherwise at its slot (nothing better is
//! left).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};

use super::Zone;

/// A daily span of local time, `from` up to (not including) `to`; `from > to` runs past
/// midnight (the usual `21:00-07:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    from: NaiveTime,
    to: NaiveTime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuietHoursError {
    #[error("quiet hours '{0}' are not of the form HH:MM-HH:MM (such as 21:00-07:00), or off")]
    Form(String),
    #[error("quiet hours '{0}' begin and end at the same time; write off to have none")]
    Empty(String),
}

impl QuietHours {
    pub fn new(from: NaiveTime, to: NaiveTime) -> Result<QuietHours, QuietHoursError> {
        if from == to {
            return Err(QuietHoursError::Empty(format!(
                "{}-{}",
                from.format("%H:%M"),
                to.format("%H:%M")
            )));
        }
        Ok(QuietHours { from, to })
    }

    /// `HH:MM-HH:MM`, or `off` (`None`).
    pub fn parse_setting(text: &str) -> Result<Option<QuietHours>, QuietHoursError> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("off") || t.is_empty() {
            return Ok(None);
        }
        t.parse().map(Some)
    }

    /// How long a spell of quiet hours lasts.
    pub fn length(self) -> TimeDelta {
        let d = self.to - self.from;
        if d < TimeDelta::zero() {
            d + TimeDelta::days(1)
        } else {
            d
        }
    }

    fn inside(self, t: NaiveTime) -> bool {
        if self.from < self.to {
            t >= self.from && t < self.to
        } else {
            t >= self.from || t < self.to
        }
    }

    /// The slot a delivery planned for `slot` gets for a recipient in `zone`, for a notice due
    /// before `deadline`, decided at `now`.
    pub fn adjust(self, slot: DateTime<Utc>, zone: Zone, deadline: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        let tz = zone.tz();
        let local = slot.with_timezone(&tz).naive_local();
        let (t, day) = (local.time(), local.date());
        if !self.inside(t) {
            return slot;
        }
        let one_day = TimeDelta::days(1);
        // The spell began on this day or, past midnight, the day before; it ends on this day
        // or, before midnight, the next.
        let after_midnight = self.from > self.to && t < self.to;
        let began = if after_midnight { day - one_day } else { day };
        let ends = if self.from > self.to && !after_midnight {
            day + one_day
        } else {
            day
        };
        let end = at_local(zone, ends, self.to);
        if end < deadline {
            return end.max(slot);
        }
        let before = at_local(zone, began, self.from) - TimeDelta::seconds(1);
        if before >= now { before } else { slot }
    }
}

/// The instant of a local time on a day, taking the earlier of two in a DST overlap and the
/// time after a DST gap.
fn at_local(zone: Zone, day: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let tz = zone.tz();
    let naive = day.and_time(time);
    let mut probe = naive;
    for _ in 0..4 {
        if let Some(dt) = tz.from_local_datetime(&probe).earliest() {
            return dt.with_timezone(&Utc);
        }
        probe += TimeDelta::minutes(30);
    }
    // No zone skips more than two hours; as a last resort read the time as UTC.
    Utc.from_utc_datetime(&naive)
}

impl FromStr for QuietHours {
    type Err = QuietHoursError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || QuietHoursError::Form(s.to_owned());
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let time = |x: &str| NaiveTime::parse_from_str(x.trim(), "%H:%M").map_err(|_| bad());
        QuietHours::new(time(a)?, time(b)?)
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.from.format("%H:%M"), self.to.format("%H:%M"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }
    fn night() -> QuietHours {
        "21:00-07:00".parse().unwrap()
    }
    fn london() -> Zone {
        "Europe/London".parse().unwrap()
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(night().to_string(), "21:00-07:00");
        assert_eq!(night().length(), TimeDelta::hours(10));
        assert_eq!(QuietHours::parse_setting("off").unwrap(), None);
        assert!(matches!("21:00".parse::<QuietHours>(), Err(QuietHoursError::Form(_))));
        assert!(matches!(
            "25:00-07:00".parse::<QuietHours>(),
            Err(QuietHoursError::Form(_))
        ));
        assert!(matches!(
            "07:00-07:00".parse::<QuietHours>(),
            Err(QuietHoursError::Empty(_))
        ));
        let day: QuietHours = "12:00-14:00".parse().unwrap();
        assert_eq!(day.length(), TimeDelta::hours(2));
    }

    #[test]
    fn outside_quiet_hours_the_slot_stands() {
        // 12:00 UTC is 15:00 in Nairobi and 13:00 in London (summer).
        let slot = utc("2015-04-16T12:00:00Z");
        let deadline = utc("2015-04-18T00:00:00Z");
        assert_eq!(night().adjust(slot, Zone::NAIROBI, deadline, slot), slot);
        assert_eq!(night().adjust(slot, london(), deadline, slot), slot);
    }

    #[test]
    fn the_same_instant_is_quiet_in_one_zone_and_not_in_another() {
        // 19:30 UTC: 22:30 in Nairobi (quiet), 20:30 in London (BST, not quiet).
        let slot = utc("2015-04-16T19:30:00Z");
        let deadline = utc("2015-04-18T00:00:00Z");
        assert_eq!(
            night().adjust(slot, Zone::NAIROBI, deadline, slot),
            utc("2015-04-17T04:00:00Z"),
            "07:00 EAT the next morning"
        );
        assert_eq!(night().adjust(slot, london(), deadline, slot), slot);
        // 23:30 UTC: 00:30 in London, past midnight: the spell ends at 07:00 BST that morning.
        let late = utc("2015-04-16T23:30:00Z");
        assert_eq!(
            night().adjust(late, london(), deadline, late),
            utc("2015-04-17T06:00:00Z")
        );
    }

    #[test]
    fn a_deadline_inside_quiet_hours_sends_before_they_begin() {
        // Due 23:00 EAT, the window starts at 01:00 EAT: 07:00 is too late, 20:59:59 is not.
        let slot = utc("2015-04-16T20:00:00Z");
        let deadline = utc("2015-04-16T22:00:00Z");
        let decided = utc("2015-04-16T10:00:00Z");
        assert_eq!(
            night().adjust(slot, Zone::NAIROBI, deadline, decided),
            utc("2015-04-16T17:59:59Z")
        );
        // Decided once quiet hours have begun: nothing better than the slot itself.
        assert_eq!(night().adjust(slot, Zone::NAIROBI, deadline, slot), slot);
    }

    #[test]
    fn a_spell_across_a_dst_change_ends_at_local_seven() {
        // London, 2015-03-29: clocks go forward at 01:00 UTC. 00:30 UTC is 00:30 GMT (quiet);
        // the spell ends at 07:00 BST = 06:00 UTC.
        let slot = utc("2015-03-29T00:30:00Z");
        let deadline = utc("2015-04-18T00:00:00Z");
        assert_eq!(
            night().adjust(slot, london(), deadline, slot),
            utc("2015-03-29T06:00:00Z")
        );
    }
}
