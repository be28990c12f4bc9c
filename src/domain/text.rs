//! Free text from people (names, titles, descriptions, reasons): held to a length, and free of
//! control characters and of the bidirectional overrides that can make a message read
//! differently from what it says (U+202E and kin). Pure.

use super::recipient::quote_prefix;

/// The longest each kind of text may be, in characters.
pub mod limits {
    pub const NAME: usize = 200;
    pub const TITLE: usize = 200;
    pub const DESCRIPTION: usize = 2_000;
    pub const REASON: usize = 500;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("is {length} characters long; at most {max} are allowed (it begins '{start}')")]
    TooLong { length: usize, max: usize, start: String },
    #[error("contains {what} (U+{code:04X}) at character {at}: '{start}'")]
    Forbidden {
        what: &'static str,
        code: u32,
        at: usize,
        start: String,
    },
}

/// Checks `text` (already trimmed by the caller if it wants): at most `max` characters, no
/// control characters (a line break is allowed where `multiline`), no bidirectional controls.
pub fn check(text: &str, max: usize, multiline: bool) -> Result<(), TextError> {
    let length = text.chars().count();
    if length > max {
        return Err(TextError::TooLong {
            length,
            max,
            start: quote_prefix(text),
        });
    }
    for (at, c) in text.chars().enumerate() {
        let what = if is_bidi_control(c) {
            "a bidirectional control character"
        } else if c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')) {
            "a control character"
        } else {
            continue;
        };
        return Err(TextError::Forbidden {
            what,
            code: u32::from(c),
            at: at + 1,
            start: quote_prefix(
                &text
                    .chars()
                    .filter(|c| !c.is_control() && !is_bidi_control(*c))
                    .collect::<String>(),
            ),
        });
    }
    Ok(())
}

/// The explicit embeddings, overrides and isolates (and the marks that steer them).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_forbidden_characters() {
        assert!(check("Jane Wanjiku", limits::NAME, false).is_ok());
        assert!(check("line one\nline two", limits::DESCRIPTION, true).is_ok());
        assert!(matches!(
            check("line one\nline two", limits::NAME, false),
            Err(TextError::Forbidden { code: 0x0A, at: 9, .. })
        ));
        let err = check("Pay \u{202E}lib rewop", limits::TITLE, false).unwrap_err();
        assert!(err.to_string().contains("bidirectional"), "{err}");
        let long = "x".repeat(5_000_000);
        let err = check(&long, limits::NAME, false).unwrap_err().to_string();
        assert!(err.contains("5000000 characters long") && err.len() < 200, "{err}");
    }
}
