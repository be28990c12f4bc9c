//! Standard Webhooks signing: `webhook-id`, `webhook-timestamp` and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, space-separated when two secrets sign
//! during a rotation), with secrets written `whsec_<base64 of 32 random bytes>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::domain::Secret;

const PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a signing secret is whsec_ followed by base64 of 24 to 64 bytes")]
    Malformed,
    #[error("the system has no randomness to make a secret from: {0}")]
    NoRandomness(String),
}

/// A new signing secret: 32 random bytes.
pub fn new_secret() -> Result<Secret, SecretError> {
    let mut key = [0_u8; 32];
    getrandom::fill(&mut key).map_err(|e| SecretError::NoRandomness(e.to_string()))?;
    Ok(Secret::new(format!("{PREFIX}{}", STANDARD.encode(key))))
}

/// The key bytes of a `whsec_…` secret.
pub fn key(secret: &Secret) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.expose().strip_prefix(PREFIX).ok_or(SecretError::Malformed)?;
    let key = STANDARD.decode(encoded).map_err(|_| SecretError::Malformed)?;
    if !(24..=64).contains(&key.len()) {
        return Err(SecretError::Malformed);
    }
    Ok(key)
}

/// `v1,<signature>` for each key, space-separated.
pub fn signature(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_and_well_formed() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(key(&a).unwrap().len(), 32);
        assert_eq!(key(&Secret::new("whsec_c2hvcnQ=")), Err(SecretError::Malformed));
        assert_eq!(key(&Secret::new("nope")), Err(SecretError::Malformed));
    }

    /// The example from the Standard Webhooks specification.
    #[test]
    fn the_specification_example_signs_the_same() {
        let key = key(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let sig = signature(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
