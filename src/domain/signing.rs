//! This deployment's signing key and what it signs: one-click unsubscribe tokens (one per
//! recipient, so a link opts out only its own recipient) and the secret path segment of SMS
//! providers' callbacks where the provider signs nothing. Pure: the key is made and kept by
//! `storage`.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::RecipientId;

/// A key of at least 32 bytes.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// The key from its stored form (standard base64); `None` if it is not a key.
    pub fn from_base64(text: &str) -> Option<SigningKey> {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim().as_bytes())
            .ok()
            .filter(|k| k.len() >= 32)
            .map(SigningKey)
    }

    /// The stored form of `bytes` as a key.
    pub fn encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn mac(&self, purpose: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The secret path segment of providers' callbacks: 32 hex digits.
    pub fn callback_path(&self) -> String {
        self.mac("callback-path")[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `{id}.{signature}`: the unsubscribe token of one recipient.
    pub fn unsubscribe_token(&self, recipient: RecipientId) -> String {
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(&self.mac(&format!("unsubscribe:{}", recipient.0))[..18]);
        format!("{}.{sig}", recipient.0)
    }

    /// The recipient a token names, if this key signed it (compared in constant time).
    pub fn check_unsubscribe(&self, token: &str) -> Option<RecipientId> {
        let (id, _) = token.split_once('.')?;
        let id = RecipientId(id.parse().ok().filter(|i: &i64| *i > 0)?);
        let expected = self.unsubscribe_token(id);
        bool::from(expected.as_bytes().ct_eq(token.as_bytes())).then_some(id)
    }

    /// Whether `given` is the callback path segment, compared in constant time.
    pub fn is_callback_path(&self, given: &str) -> bool {
        self.callback_path().as_bytes().ct_eq(given.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_recipient_and_nobody_else() {
        let key = SigningKey::from_base64(&SigningKey::encode(&[7u8; 32])).unwrap();
        let other = SigningKey::from_base64(&SigningKey::encode(&[8u8; 32])).unwrap();
        let t = key.unsubscribe_token(RecipientId(42));
        assert!(t.starts_with("42."));
        assert_eq!(key.check_unsubscribe(&t), Some(RecipientId(42)));
        assert_eq!(other.check_unsubscribe(&t), None, "another deployment's key");
        let moved = t.replacen("42.", "43.", 1);
        assert_eq!(key.check_unsubscribe(&moved), None, "a signature is for one recipient");
        for bad in ["", "42", "x.y", "0.abc", "-1.abc"] {
            assert_eq!(key.check_unsubscribe(bad), None, "{bad}");
        }
        assert_eq!(key.callback_path().len(), 32);
        assert!(key.is_callback_path(&key.callback_path()));
        assert!(!key.is_callback_path(&other.callback_path()));
        assert!(
            SigningKey::from_base64(&SigningKey::encode(&[1u8; 16])).is_none(),
            "too short"
        );
        assert_eq!(format!("{key:?}"), "SigningKey([redacted])");
    }
}
