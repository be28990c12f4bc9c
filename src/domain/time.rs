//! Instants, zones and durations as the operator types them.
//!
//! Pure: parsing never reads the clock and never guesses. A local time that does not exist
//! (a DST gap) or exists twice (a DST overlap) is refused with the choices spelled out, because
//! shifting a maintenance window by an hour without telling anyone is the worst possible outcome.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset as _, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// An IANA time zone such as `Africa/Nairobi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Zone(Tz);

impl Zone {
    pub const NAIROBI: Zone = Zone(chrono_tz::Africa::Nairobi);

    pub fn tz(self) -> Tz {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl PartialOrd for Zone {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// By IANA name, so listings of zones read alphabetically.
impl Ord for Zone {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl Default for Zone {
    fn default() -> Self {
        Zone::NAIROBI
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl FromStr for Zone {
    type Err = TimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<Tz>()
            .map(Zone)
            .map_err(|_| TimeError::UnknownZone(s.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("unknown time zone '{0}' (use an IANA name such as Africa/Nairobi or Europe/Berlin)")]
    UnknownZone(String),
    #[error("{0} ms since the epoch is outside the representable range of instants")]
    OutOfRange(i64),
    #[error(
        "'{0}' is not a time: use 'YYYY-MM-DD HH:MM[:SS]' (read in the given zone) or RFC 3339 with an offset, e.g. 2015-04-18T00:00:00+03:00"
    )]
    Unparsable(String),
    #[error(
        "{local} does not exist in {zone}: the clocks skip it (daylight saving starts). Read with the offset before the change it is {before}; with the offset after it is {after}. Give one of those, or an RFC 3339 time with an explicit offset"
    )]
    Gap {
        local: String,
        zone: Zone,
        before: String,
        after: String,
    },
    #[error(
        "{local} happens twice in {zone} (daylight saving ends): it is either {first} or {second}. Give the one you mean as RFC 3339 with its offset"
    )]
    Ambiguous {
        local: String,
        zone: Zone,
        first: String,
        second: String,
    },
    #[error("'{0}' is not a duration: use a whole number with a unit, e.g. 72h, 90m, 1d or 1h30m")]
    BadDuration(String),
}

/// Parses an instant typed by an operator: RFC 3339 with an offset, or a local
/// `YYYY-MM-DD HH:MM[:SS]` (a `T` separator works too) read in `zone`.
pub fn parse_instant(input: &str, zone: Zone) -> Result<DateTime<Utc>, TimeError> {
    let text = input.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Ok(dt.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .ok_or_else(|| TimeError::Unparsable(input.to_owned()))?;
    let tz = zone.tz();
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(dt) => Ok(dt.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Err(TimeError::Ambiguous {
            local: naive.format("%Y-%m-%d %H:%M:%S").to_string(),
            zone,
            first: describe(a),
            second: describe(b),
        }),
        LocalResult::None => {
            // The offsets in force a day either side of the gap; a zone changes at most once a day.
            let day = TimeDelta::days(1);
            let before = tz.offset_from_utc_datetime(&(naive - day)).fix();
            let after = tz.offset_from_utc_datetime(&(naive + day)).fix();
            let as_instant = |offset: chrono::FixedOffset| {
                let utc = naive - TimeDelta::seconds(i64::from(offset.local_minus_utc()));
                describe(tz.from_utc_datetime(&utc))
            };
            Err(TimeError::Gap {
                local: naive.format("%Y-%m-%d %H:%M:%S").to_string(),
                zone,
                before: as_instant(before),
                after: as_instant(after),
            })
        }
    }
}

fn describe(dt: DateTime<Tz>) -> String {
    format!("{} ({})", dt.format("%Y-%m-%dT%H:%M:%S%:z"), dt.format("%Z"))
}

/// A non-negative whole-second duration written as `72h`, `90m`, `1d`, `45s` or `1h30m`.
/// Its text form is canonical, so `reminder:24h` is the same key however it was typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(i64);

impl Span {
    pub const fn from_secs(secs: i64) -> Span {
        Span(if secs < 0 { 0 } else { secs })
    }
    pub const fn hours(h: i64) -> Span {
        Span::from_secs(h * 3600)
    }
    pub const fn secs(self) -> i64 {
        self.0
    }
    pub fn delta(self) -> TimeDelta {
        TimeDelta::seconds(self.0)
    }
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0.unsigned_abs())
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let (h, m, s) = (self.0 / 3600, self.0 % 3600 / 60, self.0 % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl FromStr for Span {
    type Err = TimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TimeError::BadDuration(s.to_owned());
        let text = s.trim();
        if text.is_empty() {
            return Err(bad());
        }
        let mut total: i64 = 0;
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                'd' => 86_400,
                'h' => 3_600,
                'm' => 60,
                's' => 1,
                _ => return Err(bad()),
            };
            let n: i64 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        }
        if !digits.is_empty() {
            return Err(bad());
        }
        Ok(Span(total))
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Milliseconds since the Unix epoch: how every instant is stored, in both SQL dialects.
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant `ms` milliseconds after the Unix epoch; out of chrono's range is an error, never
/// a made-up instant.
pub fn from_millis(ms: i64) -> Result<DateTime<Utc>, TimeError> {
    DateTime::from_timestamp_millis(ms).ok_or(TimeError::OutOfRange(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> Zone {
        "Europe/Berlin".parse().unwrap()
    }

    #[test]
    fn local_time_in_nairobi_and_berlin() {
        let t = parse_instant("2015-04-18 00:00", Zone::NAIROBI).unwrap();
        assert_eq!(t.to_rfc3339(), "2015-04-17T21:00:00+00:00");
        let t = parse_instant("2026-07-01 12:30:15", berlin()).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-07-01T10:30:15+00:00");
    }

    #[test]
    fn rfc3339_ignores_zone() {
        let t = parse_instant("2015-04-18T00:00:00+03:00", berlin()).unwrap();
        assert_eq!(t.to_rfc3339(), "2015-04-17T21:00:00+00:00");
    }

    #[test]
    fn gap_is_refused_with_choices() {
        let err = parse_instant("2026-03-29 02:30", berlin()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TimeError::Gap { .. }));
        assert!(msg.contains("2026-03-29 02:30:00"), "{msg}");
        assert!(msg.contains("Europe/Berlin"), "{msg}");
        assert!(msg.contains("2026-03-29T03:30:00+02:00 (CEST)"), "{msg}");
        assert!(msg.contains("2026-03-29T01:30:00+01:00 (CET)"), "{msg}");
    }

    #[test]
    fn overlap_is_refused_with_both_instants() {
        let err = parse_instant("2026-10-25 02:30", berlin()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TimeError::Ambiguous { .. }));
        assert!(msg.contains("2026-10-25T02:30:00+02:00 (CEST)"), "{msg}");
        assert!(msg.contains("2026-10-25T02:30:00+01:00 (CET)"), "{msg}");
    }

    #[test]
    fn garbage_and_unknown_zone() {
        assert!(matches!(
            parse_instant("next tuesday", Zone::NAIROBI),
            Err(TimeError::Unparsable(_))
        ));
        assert!(matches!("Mars/Olympus".parse::<Zone>(), Err(TimeError::UnknownZone(_))));
    }

    #[test]
    fn spans_parse_and_print_canonically() {
        for (input, secs, shown) in [
            ("72h", 72 * 3600, "72h"),
            ("1d", 86_400, "24h"),
            ("90m", 5400, "1h30m"),
            ("1h30m", 5400, "1h30m"),
            ("45s", 45, "45s"),
        ] {
            let s: Span = input.parse().unwrap();
            assert_eq!(s.secs(), secs);
            assert_eq!(s.to_string(), shown);
        }
        for bad in ["", "h", "12", "3w", "-1h", "1.5h"] {
            assert!(bad.parse::<Span>().is_err(), "{bad}");
        }
    }
}
