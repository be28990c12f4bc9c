//! Ad-hoc broadcasts: who they are for, and the free messages they carry.
//!
//! Pure. An audience filter admits a recipient on some of its channels, or not at all; the same
//! filter decides both a dry run's counts and a real run's rows.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{Audience, Channel, ComponentId, Locale, Recipient};

/// Who an ad-hoc broadcast is for. Opted-out recipients and canary seeds are never admitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceFilter {
    /// Empty: customers and billers.
    pub audiences: Vec<Audience>,
    /// Recipients who care about any of these (a recipient with no preference cares about all).
    pub components: Vec<ComponentId>,
    /// Only these channels (empty: every channel of the recipient).
    pub channels: Vec<Channel>,
    pub locale: Option<Locale>,
    /// Only recipients with these natural keys (a `--recipients` CSV subset).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subset: Option<Vec<String>>,
}

impl AudienceFilter {
    /// Builds the membership test once (the subset as a hash set).
    pub fn matcher(&self) -> Matcher<'_> {
        Matcher {
            filter: self,
            subset: self.subset.as_ref().map(|s| s.iter().map(String::as_str).collect()),
        }
    }
}

pub struct Matcher<'a> {
    filter: &'a AudienceFilter,
    subset: Option<HashSet<&'a str>>,
}

impl Matcher<'_> {
    /// The channels on which `r` receives the broadcast; empty when it does not. A window
    /// notice passes the window's components: a recipient must care about one of them.
    pub fn channels(&self, r: &Recipient, window_components: Option<&[ComponentId]>) -> Vec<Channel> {
        let f = self.filter;
        let p = &r.profile;
        let admitted = !p.opt_out
            && (f.audiences.is_empty() || f.audiences.contains(&p.kind))
            && (f.components.is_empty() || p.cares_about(&f.components))
            && window_components.is_none_or(|c| p.cares_about(c))
            && f.locale.is_none_or(|l| l == p.locale)
            && self
                .subset
                .as_ref()
                .is_none_or(|s| s.contains(p.natural_key().as_str()));
        if !admitted {
            return Vec::new();
        }
        p.effective_channels()
            .into_iter()
            .filter(|c| f.channels.is_empty() || f.channels.contains(c))
            .collect()
    }
}

/// One locale's version of a free message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageText {
    /// The SMS text and the email body.
    pub text: String,
    /// The email subject; a default is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A free message in English and, optionally, Swahili (which falls back to English).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    en: MessageText,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sw: Option<MessageText>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the {0} text is empty")]
    Empty(Locale),
}

impl Message {
    pub fn new(en: MessageText, sw: Option<MessageText>) -> Result<Message, MessageError> {
        if en.text.trim().is_empty() {
            return Err(MessageError::Empty(Locale::En));
        }
        if sw.as_ref().is_some_and(|m| m.text.trim().is_empty()) {
            return Err(MessageError::Empty(Locale::Sw));
        }
        Ok(Message { en, sw })
    }

    /// The version for `locale`, or the English one.
    pub fn get(&self, locale: Locale) -> &MessageText {
        match (locale, &self.sw) {
            (Locale::Sw, Some(sw)) => sw,
            _ => &self.en,
        }
    }

    /// Whether `locale` has its own version (not the English fallback).
    pub fn has(&self, locale: Locale) -> bool {
        locale == Locale::En || self.sw.is_some()
    }
}
