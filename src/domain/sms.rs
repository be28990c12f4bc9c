//! SMS encoding and segment counting, as a carrier bills them.
//!
//! Pure. GSM-7 carries 160 septets in one message and 153 per part once concatenated; the
//! extension characters (`^ { } \ [ ] ~ | €` and form feed) take two septets. Any character
//! outside GSM-7 forces UCS-2: 70 UTF-16 units, 67 per part.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        })
    }
}

const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{0c}";

/// Septets a character takes in GSM-7, or `None` if it is not in the alphabet.
pub fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The first character of `text` that forces UCS-2, if any.
pub fn first_non_gsm7(text: &str) -> Option<char> {
    text.chars().find(|&c| gsm7_septets(c).is_none())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmsCost {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    pub units: usize,
    pub segments: usize,
}

/// The encoding, size and billed segment count of `text`. A character never straddles two
/// parts: an extension character (two septets) or a surrogate pair (two UTF-16 units) that
/// would not fit in what is left of a part starts the next one, as handsets and carriers do.
pub fn cost(text: &str) -> SmsCost {
    let septets: Option<Vec<usize>> = text.chars().map(gsm7_septets).collect();
    let (encoding, widths, single, part) = match septets {
        Some(w) => (Encoding::Gsm7, w, 160, 153),
        None => (Encoding::Ucs2, text.chars().map(char::len_utf16).collect(), 70, 67),
    };
    let units: usize = widths.iter().sum();
    let segments = if units <= single {
        1
    } else {
        let (mut count, mut used) = (1, 0);
        for w in widths {
            if used + w > part {
                count += 1;
                used = 0;
            }
            used += w;
        }
        count
    };
    SmsCost {
        encoding,
        units,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let cases: &[(&str, Encoding, usize)] = &[
            ("Hello", Encoding::Gsm7, 1),
            (&"a".repeat(160), Encoding::Gsm7, 1),
            (&"a".repeat(161), Encoding::Gsm7, 2),
            (&"€".repeat(80), Encoding::Gsm7, 1),
            (&"€".repeat(81), Encoding::Gsm7, 2),
            ("Huduma za M-PESA hazitapatikana", Encoding::Gsm7, 1),
            ("It\u{2019}s down", Encoding::Ucs2, 1),
            (&"é".repeat(70), Encoding::Gsm7, 1),
            (&"ł".repeat(70), Encoding::Ucs2, 1),
            (&"ł".repeat(71), Encoding::Ucs2, 2),
            ("😀", Encoding::Ucs2, 1),
        ];
        for (text, enc, segs) in cases {
            let c = cost(text);
            assert_eq!((c.encoding, c.segments), (*enc, *segs), "{text}");
        }
        assert_eq!(first_non_gsm7("ok \u{201c}quoted\u{201d}"), Some('\u{201c}'));
    }

    /// The counting agrees with an independent splitter on the cases that matter for cost.
    #[test]
    fn agrees_with_sms_splitter() {
        let swahili = "M-PESA: Ndugu mteja, huduma za M-PESA hazitapatikana kuanzia Jumamosi 18 Aprili 2015 saa 00:00 hadi Jumapili 19 Aprili 2015 saa 23:59 kwa sababu ya matengenezo yaliyopangwa. Tunaomba radhi.";
        let mut cases: Vec<String> = vec![
            "Hello World!".into(),
            "Plain GSM-7 with digits 0123456789 and @£$¥ symbols.".into(),
            "Braces {like this} and [brackets] cost two septets each: ^ ~ | \\ €".into(),
            swahili.into(),
            "It\u{2019}s one smart quote away from UCS-2.".into(),
            "Maintenance tonight 😀".into(),
            "a".repeat(160),
            "a".repeat(161),
            "a".repeat(306),
            "a".repeat(307),
            "€".repeat(80),
            "€".repeat(81),
            "ł".repeat(70),
            "ł".repeat(71),
            "ł".repeat(134),
            "ł".repeat(135),
            format!("{}€", "a".repeat(152)) + &"b".repeat(10),
            format!("{}€", "a".repeat(158)),
            format!("{}😀", "ł".repeat(66)) + &"ł".repeat(10),
            "😀".repeat(40),
        ];
        cases.push(format!("{swahili} {swahili}"));
        for text in &cases {
            let ours = cost(text);
            let theirs = sms_splitter::SplitSms::default().split(text.clone());
            let their_encoding = if theirs.character_set == "GSM" {
                Encoding::Gsm7
            } else {
                Encoding::Ucs2
            };
            assert_eq!(ours.encoding, their_encoding, "{text:?}");
            assert_eq!(ours.segments, theirs.parts.len(), "{text:?}: {} units", ours.units);
        }
    }
}
