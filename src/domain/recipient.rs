//! Who is told: customers and billers, their addresses, language, zone and preferences.
//!
//! Pure. Every field is parsed into a type that cannot hold a bad value, so storage and the
//! planner never re-check a phone number or an email address.

use std::fmt;
use std::str::FromStr;

use super::{ComponentId, Zone};

/// The two audiences. Billers and partners (a power utility, an exchange) often want earlier
/// notice and signed webhooks; customers are the millions reached by SMS and email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    Customer,
    Biller,
}

impl Audience {
    pub const ALL: [Audience; 2] = [Audience::Customer, Audience::Biller];
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Customer => "customer",
            Audience::Biller => "biller",
        }
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Audience {
    type Err = RecipientError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "customer" | "customers" => Ok(Audience::Customer),
            "biller" | "billers" | "partner" => Ok(Audience::Biller),
            _ => Err(RecipientError::Kind(s.to_owned())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Locale {
    #[default]
    En,
    Sw,
}

impl Locale {
    pub const ALL: [Locale; 2] = [Locale::En, Locale::Sw];
    pub fn as_str(self) -> &'static str {
        match self {
            Locale::En => "en",
            Locale::Sw => "sw",
        }
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Locale {
    type Err = RecipientError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "en" => Ok(Locale::En),
            "sw" => Ok(Locale::Sw),
            _ => Err(RecipientError::Locale(s.to_owned())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Email,
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Sms, Channel::Email, Channel::Webhook];
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = RecipientError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sms" => Ok(Channel::Sms),
            "email" => Ok(Channel::Email),
            "webhook" => Ok(Channel::Webhook),
            _ => Err(RecipientError::Channel(s.to_owned())),
        }
    }
}

/// A phone number in E.164 form (`+254712345678`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses a number that can receive SMS, reading national forms as Kenyan: `0712 345 678`,
    /// `0110…`, `254712345678`, `00254712345678` and `+254712345678` all become
    /// `+254712345678`. Digits only, besides spaces, dashes, dots, brackets and a leading `+`;
    /// a fixed line (which cannot receive SMS, by the numbering plan's metadata) is refused.
    pub fn parse(input: &str) -> Result<PhoneNumber, RecipientError> {
        let bad = |reason: &'static str| RecipientError::Phone {
            value: quote_prefix(input),
            reason,
        };
        let compact: String = input
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
            .collect();
        let (plus, digits) = match compact.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, compact.as_str()),
        };
        if digits.is_empty() {
            return Err(bad("it has no digits"));
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(
                "only digits belong in it (with spaces, dashes, dots, brackets and a leading +)",
            ));
        }
        let candidate = if plus {
            format!("+{digits}")
        } else if let Some(international) = digits.strip_prefix("00") {
            format!("+{international}")
        } else if digits.len() == 12 && digits.starts_with("254") {
            format!("+{digits}")
        } else {
            digits.to_owned()
        };
        let invalid = "it is not a valid number (E.164 like +254712345678, or Kenyan 07…/01…)";
        let parsed = phonenumber::parse(Some(phonenumber::country::Id::KE), &candidate).map_err(|_| bad(invalid))?;
        if !phonenumber::is_valid(&parsed) {
            return Err(bad(invalid));
        }
        match parsed.number_type(&phonenumber::metadata::DATABASE) {
            phonenumber::Type::Mobile | phonenumber::Type::FixedLineOrMobile => {}
            phonenumber::Type::FixedLine => return Err(bad("it is a fixed line, which cannot receive SMS")),
            _ => return Err(bad("it is not a mobile number, so it cannot receive SMS")),
        }
        Ok(PhoneNumber(parsed.format().mode(phonenumber::Mode::E164).to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A number read back from storage, which holds only numbers that passed [`parse`]:
    /// re-validating millions of them on every page would cost minutes for nothing.
    ///
    /// [`parse`]: PhoneNumber::parse
    pub fn from_trusted(e164: String) -> PhoneNumber {
        PhoneNumber(e164)
    }

    /// `+2547****5678`: enough to tell numbers apart in a log, not enough to call one.
    pub fn masked(&self) -> String {
        mask(&self.0, 5, 4)
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address, checked for shape (one `@`, a dotted domain of letters, digits and
/// hyphens, nothing that needs quoting). The domain is lower-cased; the local part is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(input: &str) -> Result<EmailAddress, RecipientError> {
        let bad = || RecipientError::Email(input.to_owned());
        let text = input.trim();
        let (local, domain) = text.rsplit_once('@').ok_or_else(bad)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = domain.len() <= 253
            && labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !local_ok || !domain_ok {
            return Err(bad());
        }
        Ok(EmailAddress(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An address read back from storage, which holds only addresses that passed `parse`.
    pub fn from_trusted(address: String) -> EmailAddress {
        EmailAddress(address)
    }

    pub fn masked(&self) -> String {
        match self.0.split_once('@') {
            Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
            None => "***".to_owned(),
        }
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bad value as an error quotes it: whole if short, else its first 40 characters and how
/// long it was, so a 100,000-character field does not become a 100,000-character message.
pub fn quote_prefix(value: &str) -> String {
    const MAX: usize = 40;
    let count = value.chars().count();
    if count <= MAX {
        value.to_owned()
    } else {
        format!("{}… ({count} characters)", value.chars().take(MAX).collect::<String>())
    }
}

fn mask(s: &str, keep_start: usize, keep_end: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= keep_start + keep_end {
        return "*".repeat(chars.len());
    }
    let mut out: String = chars[..keep_start].iter().collect();
    out.push_str(&"*".repeat(chars.len() - keep_start - keep_end));
    out.extend(&chars[chars.len() - keep_end..]);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecipientId(pub i64);

impl fmt::Display for RecipientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A recipient as it is stored: validated, with its database id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub id: RecipientId,
    pub profile: Profile,
}

/// Everything about a recipient but its id: what an import row becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub kind: Audience,
    pub name: String,
    pub phone: Option<PhoneNumber>,
    pub email: Option<EmailAddress>,
    pub locale: Locale,
    pub zone: Zone,
    /// The components this recipient cares about; empty means all of them.
    pub components: Vec<ComponentId>,
    /// The channels this recipient asked for; empty means every channel it has an address for.
    pub channels: Vec<Channel>,
    pub opt_out: bool,
}

impl Profile {
    /// Checks the rules that tie fields together. Called by every constructor of a profile.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: Audience,
        name: &str,
        phone: Option<PhoneNumber>,
        email: Option<EmailAddress>,
        locale: Locale,
        zone: Zone,
        components: Vec<ComponentId>,
        channels: Vec<Channel>,
        opt_out: bool,
    ) -> Result<Profile, RecipientError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(RecipientError::MissingName);
        }
        super::text::check(name, super::text::limits::NAME, false).map_err(RecipientError::Name)?;
        if phone.is_none() && email.is_none() {
            return Err(RecipientError::NoAddress);
        }
        for &c in &channels {
            match c {
                Channel::Sms if phone.is_none() => {
                    return Err(RecipientError::ChannelWithoutAddress(c));
                }
                Channel::Email if email.is_none() => {
                    return Err(RecipientError::ChannelWithoutAddress(c));
                }
                Channel::Webhook if kind != Audience::Biller => {
                    return Err(RecipientError::WebhookForCustomer);
                }
                _ => {}
            }
        }
        let mut channels = channels;
        channels.sort();
        channels.dedup();
        let mut components = components;
        components.sort();
        components.dedup();
        Ok(Profile {
            kind,
            name: name.to_owned(),
            phone,
            email,
            locale,
            zone,
            components,
            channels,
            opt_out,
        })
    }

    /// The natural key: the phone number, else the email address.
    pub fn natural_key(&self) -> String {
        match (&self.phone, &self.email) {
            (Some(p), _) => p.as_str().to_owned(),
            (None, Some(e)) => e.as_str().to_ascii_lowercase(),
            (None, None) => String::new(),
        }
    }

    /// The channels this recipient is reached on.
    pub fn effective_channels(&self) -> Vec<Channel> {
        if !self.channels.is_empty() {
            return self.channels.clone();
        }
        let mut out = Vec::with_capacity(2);
        if self.phone.is_some() {
            out.push(Channel::Sms);
        }
        if self.email.is_some() {
            out.push(Channel::Email);
        }
        out
    }

    /// Whether a window touching `affected` concerns this recipient.
    pub fn cares_about(&self, affected: &[ComponentId]) -> bool {
        self.components.is_empty() || self.components.iter().any(|c| affected.contains(c))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    #[error("kind '{}' is not one of customer, biller", quote_prefix(.0))]
    Kind(String),
    #[error("locale '{}' is not one of en, sw", quote_prefix(.0))]
    Locale(String),
    #[error("channel '{}' is not one of sms, email, webhook", quote_prefix(.0))]
    Channel(String),
    #[error("phone '{value}': {reason}")]
    Phone { value: String, reason: &'static str },
    #[error("email '{}' is not a valid email address", quote_prefix(.0))]
    Email(String),
    #[error("name is required")]
    MissingName,
    #[error("name {0}")]
    Name(super::text::TextError),
    #[error("a phone or an email is required")]
    NoAddress,
    #[error("channel {0} was asked for but the recipient has no address for it")]
    ChannelWithoutAddress(Channel),
    #[error("channel webhook is for billers only")]
    WebhookForCustomer,
    #[error("opt_out '{}' is not one of true, false, yes, no, 1, 0", quote_prefix(.0))]
    OptOut(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kenyan_forms_normalise_to_e164() {
        for input in [
            "0712345678",
            "0712 345 678",
            "254712345678",
            "+254712345678",
            "+254 712-345-678",
        ] {
            assert_eq!(PhoneNumber::parse(input).unwrap().as_str(), "+254712345678", "{input}");
        }
        assert_eq!(PhoneNumber::parse("0110123456").unwrap().as_str(), "+254110123456");
        assert_eq!(PhoneNumber::parse("+4915123456789").unwrap().as_str(), "+4915123456789");
        // The international prefix as dialled from Kenya.
        assert_eq!(PhoneNumber::parse("00254712345683").unwrap().as_str(), "+254712345683");
        assert_eq!(
            PhoneNumber::parse("0049 151 23456789").unwrap().as_str(),
            "+4915123456789"
        );
    }

    #[test]
    fn bad_phones_are_refused_with_the_reason() {
        for input in ["", "12", "07123", "+2547123456789999", "hello", "+999123456789", "+"] {
            assert!(PhoneNumber::parse(input).is_err(), "{input}");
        }
        let reason = |input: &str| PhoneNumber::parse(input).unwrap_err().to_string();
        // A Nairobi landline is a valid number that cannot receive SMS.
        assert!(reason("0202345678").contains("fixed line"), "{}", reason("0202345678"));
        // Trailing garbage is not read past.
        assert!(
            reason("+254712345684x").contains("only digits"),
            "{}",
            reason("+254712345684x")
        );
        // A huge value is quoted by its start.
        let long = "7".repeat(100_000);
        assert!(reason(&long).len() < 200, "{}", reason(&long).len());
    }

    #[test]
    fn emails() {
        assert_eq!(
            EmailAddress::parse(" Jane.Doe@Example.CO.KE ").unwrap().as_str(),
            "Jane.Doe@example.co.ke"
        );
        for bad in [
            "", "a", "a@b", "@x.ke", "a@@x.ke", "a b@x.ke", "a@x..ke", "a@-x.ke", ".a@x.ke",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn masking_hides_the_middle() {
        assert_eq!(PhoneNumber::parse("0712345678").unwrap().masked(), "+2547****5678");
        assert_eq!(EmailAddress::parse("jane@x.ke").unwrap().masked(), "j***@x.ke");
    }

    fn profile(channels: Vec<Channel>, kind: Audience) -> Result<Profile, RecipientError> {
        Profile::new(
            kind,
            "Jane",
            Some(PhoneNumber::parse("0712345678").unwrap()),
            None,
            Locale::Sw,
            Zone::NAIROBI,
            vec![],
            channels,
            false,
        )
    }

    #[test]
    fn channels_need_addresses() {
        assert_eq!(
            profile(vec![], Audience::Customer).unwrap().effective_channels(),
            vec![Channel::Sms]
        );
        assert_eq!(
            profile(vec![Channel::Email], Audience::Customer),
            Err(RecipientError::ChannelWithoutAddress(Channel::Email))
        );
        assert_eq!(
            profile(vec![Channel::Webhook], Audience::Customer),
            Err(RecipientError::WebhookForCustomer)
        );
        assert!(profile(vec![Channel::Webhook, Channel::Sms], Audience::Biller).is_ok());
    }
}
