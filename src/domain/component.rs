//! Components: the parts of the service a window affects (`send-money`, `pay-bill`), by id,
//! and their display names per locale. Which ids exist is configuration.

use std::fmt;
use std::str::FromStr;

use super::Locale;

/// A component id: a lowercase slug such as `send-money`. Which ids exist is configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId(String);

impl ComponentId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("component '{0}' is not a valid id (lowercase letters, digits and '-', e.g. send-money)")]
pub struct ComponentError(pub String);

impl FromStr for ComponentId {
    type Err = ComponentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let ok = !t.is_empty()
            && t.len() <= 64
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !t.starts_with('-');
        if ok {
            Ok(ComponentId(t.to_owned()))
        } else {
            Err(ComponentError(s.to_owned()))
        }
    }
}

impl serde::Serialize for ComponentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ComponentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Display names of a component in every locale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentNames {
    pub en: String,
    pub sw: String,
}

impl ComponentNames {
    pub fn get(&self, locale: Locale) -> &str {
        match locale {
            Locale::En => &self.en,
            Locale::Sw => &self.sw,
        }
    }
}
