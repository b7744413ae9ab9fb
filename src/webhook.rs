//! Signed webhook calls in the style of the [Standard Webhooks] specification: what the `http`
//! executor sends, and what a receiver checks.
//!
//! A signed call carries three headers:
//!
//! - `webhook-id`: the call's id, the node's idempotency key `{runId}/{nodeId}` (the same for
//!   every attempt of the node, and also sent as `idempotency-key`);
//! - `webhook-timestamp`: when the attempt was sent, in unix seconds;
//! - `webhook-signature`: one or more space-separated `v1,<base64 HMAC-SHA-256>` signatures of
//!   the bytes `{id}.{timestamp}.{body}`, one per signing secret (several while a secret is
//!   being rotated).
//!
//! A receiver recomputes the HMAC over the body exactly as received (before any JSON parsing),
//! accepts the call when one of the `v1` signatures matches (compared in constant time) and the
//! timestamp is within a tolerance of its clock (five minutes by default), and answers a 4xx
//! otherwise:
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use flexrun::webhook::{self, WebhookHeaders, WebhookSecret};
//!
//! // The published Standard Webhooks test vector.
//! let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//! let body = br#"{"test": 2432232314}"#;
//! let signature = webhook::sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
//! assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
//!
//! let headers = WebhookHeaders {
//!     id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
//!     timestamp: "1614265330",
//!     signature: &signature,
//! };
//! let received_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1614265330 + 12);
//! webhook::verify(&secret, &headers, body, received_at, webhook::DEFAULT_TOLERANCE)?;
//! assert!(webhook::verify(&secret, &headers, b"{}", received_at, webhook::DEFAULT_TOLERANCE).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use ring::hmac;

/// The header carrying the call's id (the node's idempotency key).
pub const ID_HEADER: &str = "webhook-id";
/// The header carrying the attempt's unix time in seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header carrying the space-separated `v1,<base64>` signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// How far a call's timestamp may be from the receiver's clock, either way, by default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// The prefix of a serialized secret: `whsec_` then the key in standard base64.
pub const SECRET_PREFIX: &str = "whsec_";
/// The shortest key accepted, in bytes (192 bits, as the specification asks).
pub const MIN_SECRET_BYTES: usize = 24;
/// The longest key accepted, in bytes (512 bits, as the specification allows).
pub const MAX_SECRET_BYTES: usize = 64;

/// The version tag of a symmetric (HMAC-SHA-256) signature.
const VERSION: &str = "v1";

/// A signing secret: an HMAC-SHA-256 key. Its `Debug` form shows no key material, and no
/// error of this module quotes it.
#[derive(Clone)]
pub struct WebhookSecret {
    key: hmac::Key,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(redacted)")
    }
}

/// Why a secret was refused. The messages never quote the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The value is empty (or only whitespace).
    #[error("the signing secret is empty")]
    Empty,
    /// The value does not start with `whsec_`.
    #[error("a signing secret is written `whsec_<base64>`; this one does not start with `whsec_`")]
    MissingPrefix,
    /// The part after `whsec_` is not standard base64.
    #[error("the part of the signing secret after `whsec_` is not valid standard base64")]
    Base64,
    /// The key is shorter or longer than the specification allows.
    #[error(
        "a signing secret must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes of key; this one holds {bytes}"
    )]
    Length {
        /// The key's length in bytes.
        bytes: usize,
    },
}

impl WebhookSecret {
    /// Reads a secret in the Standard Webhooks form, `whsec_` followed by the key in standard
    /// base64 (padding optional). Surrounding whitespace is ignored.
    ///
    /// A value without the prefix is refused rather than guessed at: read as raw bytes by one
    /// side and as base64 by the other, it would produce signatures nobody can verify. Use
    /// [`WebhookSecret::from_bytes`] for a raw key.
    ///
    /// # Errors
    /// [`SecretError`] when the value is empty, lacks the prefix, is not base64, or holds a key
    /// outside [`MIN_SECRET_BYTES`]..=[`MAX_SECRET_BYTES`].
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::Empty);
        }
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let bytes = STANDARD_PAD_INDIFFERENT
            .decode(encoded)
            .map_err(|_| SecretError::Base64)?;
        Self::from_bytes(&bytes)
    }

    /// Reads one or more whitespace-separated secrets (each as [`WebhookSecret::parse`]
    /// reads it). A sender holding several signs every call with each of them, in order: that
    /// is how a secret is rotated without refusing a call.
    ///
    /// # Errors
    /// [`SecretError::Empty`] when there is none; otherwise the first secret's error.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, SecretError> {
        let secrets = text
            .split_whitespace()
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(secrets)
    }

    /// A secret from the raw key.
    ///
    /// # Errors
    /// [`SecretError::Length`] for a key outside [`MIN_SECRET_BYTES`]..=[`MAX_SECRET_BYTES`].
    pub fn from_bytes(key: &[u8]) -> Result<Self, SecretError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::Length { bytes: key.len() });
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        })
    }
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, SecretError> {
        Self::parse(s)
    }
}

/// The bytes a signature covers: `{id}.{timestamp}.{body}`.
fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// The signature of a call with `id`, sent at `timestamp` (unix seconds), carrying `body`:
/// `v1,` and the base64 HMAC-SHA-256 of `{id}.{timestamp}.{body}` under `secret`. Several
/// signatures (one per secret) go into the header separated by spaces.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut context = hmac::Context::with_key(&secret.key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("{VERSION},{}", STANDARD.encode(context.sign()))
}

/// The three headers of a received call, as their text values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookHeaders<'a> {
    /// `webhook-id`.
    pub id: &'a str,
    /// `webhook-timestamp`.
    pub timestamp: &'a str,
    /// `webhook-signature`.
    pub signature: &'a str,
}

impl<'a> WebhookHeaders<'a> {
    /// Reads the headers through `get`, which answers a header's value by its lowercase name,
    /// e.g. `WebhookHeaders::from_lookup(|name| headers.get(name)?.to_str().ok())` over an
    /// `http::HeaderMap`.
    ///
    /// # Errors
    /// [`VerifyError::MissingHeader`] naming the first header that is absent or empty.
    pub fn from_lookup(get: impl Fn(&'static str) -> Option<&'a str>) -> Result<Self, VerifyError> {
        let read = |header: &'static str| {
            get(header)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or(VerifyError::MissingHeader { header })
        };
        Ok(Self {
            id: read(ID_HEADER)?,
            timestamp: read(TIMESTAMP_HEADER)?,
            signature: read(SIGNATURE_HEADER)?,
        })
    }
}

/// Why a received call was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A header is absent or empty.
    #[error("header `{header}` is missing")]
    MissingHeader {
        /// Its name.
        header: &'static str,
    },
    /// `webhook-timestamp` is not a whole number of unix seconds.
    #[error("header `webhook-timestamp` is not unix seconds")]
    BadTimestamp,
    /// The timestamp is older than the tolerance allows (a replayed or long-delayed call).
    #[error("the call is {age_secs} s old; at most {tolerance_secs} s are accepted")]
    TooOld {
        /// How old the call is, in seconds.
        age_secs: u64,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// The timestamp is further in the future than the tolerance allows.
    #[error("the call is dated {ahead_secs} s ahead; at most {tolerance_secs} s are accepted")]
    TooNew {
        /// How far ahead, in seconds.
        ahead_secs: u64,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// No `v1` signature of the header matches the secret and the body.
    #[error("no `v1` signature in `webhook-signature` matches")]
    NoMatchingSignature,
}

/// Checks a received call: its timestamp is within `tolerance` of `now`, and one of the
/// space-separated signatures of `headers.signature` is the `v1` HMAC-SHA-256 of
/// `{id}.{timestamp}.{body}` under `secret`. Each candidate is compared in constant time;
/// entries of other versions (such as `v1a`) and malformed entries are skipped.
///
/// `body` must be the bytes as received. A receiver holding several secrets (while it
/// rotates) calls this once per secret.
///
/// # Errors
/// [`VerifyError`] saying why the call is refused; a receiver answers it with a 4xx.
pub fn verify(
    secret: &WebhookSecret,
    headers: &WebhookHeaders<'_>,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let sent: u64 = match headers.timestamp.trim() {
        t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            t.parse().map_err(|_| VerifyError::BadTimestamp)?
        }
        _ => return Err(VerifyError::BadTimestamp),
    };
    let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs(),
        Err(_) => 0,
    };
    let tolerance_secs = tolerance.as_secs();
    if now > sent && now - sent > tolerance_secs {
        return Err(VerifyError::TooOld {
            age_secs: now - sent,
            tolerance_secs,
        });
    }
    if sent > now && sent - now > tolerance_secs {
        return Err(VerifyError::TooNew {
            ahead_secs: sent - now,
            tolerance_secs,
        });
    }
    let content = signed_content(headers.id, headers.timestamp.trim(), body);
    let matches = headers
        .signature
        .split_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == VERSION)
        .filter_map(|(_, encoded)| STANDARD_PAD_INDIFFERENT.decode(encoded).ok())
        .any(|tag| hmac::verify(&secret.key, &content, &tag).is_ok());
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published Standard Webhooks test vector (the reference libraries' sign test).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: u64 = 1614265330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    /// A signature of another key, as the reference libraries' tests use.
    const FOREIGN_SIGNATURE: &str = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";

    fn secret() -> WebhookSecret {
        WebhookSecret::parse(VECTOR_SECRET).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn headers(signature: &str) -> WebhookHeaders<'_> {
        WebhookHeaders {
            id: VECTOR_ID,
            timestamp: "1614265330",
            signature,
        }
    }

    fn check(signature: &str, body: &[u8], now: u64) -> Result<(), VerifyError> {
        verify(
            &secret(),
            &headers(signature),
            body,
            at(now),
            DEFAULT_TOLERANCE,
        )
    }

    #[test]
    fn signing_reproduces_the_published_test_vector() {
        assert_eq!(
            sign(&secret(), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
        assert_eq!(
            check(VECTOR_SIGNATURE, VECTOR_BODY, VECTOR_TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn a_changed_byte_id_or_timestamp_breaks_the_signature() {
        let mut body = VECTOR_BODY.to_vec();
        for i in 0..body.len() {
            body[i] ^= 0x01;
            assert_eq!(
                check(VECTOR_SIGNATURE, &body, VECTOR_TIMESTAMP),
                Err(VerifyError::NoMatchingSignature),
                "byte {i}"
            );
            body[i] ^= 0x01;
        }
        let other_id = WebhookHeaders {
            id: "msg_other",
            ..headers(VECTOR_SIGNATURE)
        };
        let other_time = WebhookHeaders {
            timestamp: "1614265331",
            ..headers(VECTOR_SIGNATURE)
        };
        for h in [other_id, other_time] {
            assert_eq!(
                verify(
                    &secret(),
                    &h,
                    VECTOR_BODY,
                    at(VECTOR_TIMESTAMP),
                    DEFAULT_TOLERANCE
                ),
                Err(VerifyError::NoMatchingSignature),
                "{h:?}"
            );
        }
        let other_key = WebhookSecret::from_bytes(&[7; 32]).unwrap();
        assert_eq!(
            verify(
                &other_key,
                &headers(VECTOR_SIGNATURE),
                VECTOR_BODY,
                at(VECTOR_TIMESTAMP),
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused_either_way() {
        let t = VECTOR_TIMESTAMP;
        assert_eq!(check(VECTOR_SIGNATURE, VECTOR_BODY, t + 300), Ok(()));
        assert_eq!(check(VECTOR_SIGNATURE, VECTOR_BODY, t - 300), Ok(()));
        assert_eq!(
            check(VECTOR_SIGNATURE, VECTOR_BODY, t + 301),
            Err(VerifyError::TooOld {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            check(VECTOR_SIGNATURE, VECTOR_BODY, t - 301),
            Err(VerifyError::TooNew {
                ahead_secs: 301,
                tolerance_secs: 300
            })
        );
        let strict = verify(
            &secret(),
            &headers(VECTOR_SIGNATURE),
            VECTOR_BODY,
            at(t + 2),
            Duration::from_secs(1),
        );
        assert!(matches!(
            strict,
            Err(VerifyError::TooOld { age_secs: 2, .. })
        ));
        for bad in [
            "",
            "soon",
            "-1614265330",
            "1614265330.5",
            "99999999999999999999999",
        ] {
            let h = WebhookHeaders {
                timestamp: bad,
                ..headers(VECTOR_SIGNATURE)
            };
            assert_eq!(
                verify(&secret(), &h, VECTOR_BODY, at(t), DEFAULT_TOLERANCE),
                Err(VerifyError::BadTimestamp),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn any_matching_v1_signature_of_several_is_accepted() {
        let rotated = format!(
            "{FOREIGN_SIGNATURE} v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {VECTOR_SIGNATURE} {FOREIGN_SIGNATURE}"
        );
        assert_eq!(check(&rotated, VECTOR_BODY, VECTOR_TIMESTAMP), Ok(()));
        let other_version = VECTOR_SIGNATURE.replacen("v1,", "v1a,", 1);
        for refused in [
            FOREIGN_SIGNATURE.to_owned(),
            format!("{FOREIGN_SIGNATURE} {FOREIGN_SIGNATURE}"),
            other_version,
            "v1,not-base64!".to_owned(),
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_owned(),
            "v1,".to_owned(),
        ] {
            assert_eq!(
                check(&refused, VECTOR_BODY, VECTOR_TIMESTAMP),
                Err(VerifyError::NoMatchingSignature),
                "{refused}"
            );
        }
    }

    #[test]
    fn each_secret_of_a_list_signs_and_verifies_on_its_own() {
        let old = WebhookSecret::from_bytes(&[1; 24]).unwrap();
        let new = WebhookSecret::from_bytes(&[2; 64]).unwrap();
        let both = [old.clone(), new.clone()]
            .iter()
            .map(|s| sign(s, "r/n", VECTOR_TIMESTAMP, b"{}"))
            .collect::<Vec<_>>()
            .join(" ");
        let h = WebhookHeaders {
            id: "r/n",
            timestamp: "1614265330",
            signature: &both,
        };
        for s in [&old, &new] {
            assert_eq!(
                verify(s, &h, b"{}", at(VECTOR_TIMESTAMP), DEFAULT_TOLERANCE),
                Ok(())
            );
        }
        let listed =
            WebhookSecret::parse_list(&format!("  {VECTOR_SECRET}\n{VECTOR_SECRET} ")).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            sign(&listed[1], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
    }

    #[test]
    fn secrets_are_whsec_base64_of_24_to_64_bytes_and_never_shown() {
        let unpadded = WebhookSecret::parse(&format!("{SECRET_PREFIX}{}", "A".repeat(32)));
        assert!(unpadded.is_ok());
        let padded = format!("{SECRET_PREFIX}{}", STANDARD.encode([9u8; 25]));
        assert!(padded.ends_with('='));
        assert!(WebhookSecret::parse(&padded).is_ok());
        let cases = [
            ("", SecretError::Empty),
            ("  \n", SecretError::Empty),
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                SecretError::MissingPrefix,
            ),
            ("whsec_not base64!", SecretError::Base64),
            ("whsec_c2hvcnQ=", SecretError::Length { bytes: 5 }),
        ];
        for (text, expected) in cases {
            let err = WebhookSecret::parse(text).unwrap_err();
            assert_eq!(err, expected, "{text:?}");
            let shown = err.to_string();
            assert!(
                text.trim().is_empty() || !shown.contains(text.trim_start_matches(SECRET_PREFIX)),
                "{shown}"
            );
        }
        let long = format!("{SECRET_PREFIX}{}", STANDARD.encode([0u8; 65]));
        assert_eq!(
            WebhookSecret::parse(&long).unwrap_err(),
            SecretError::Length { bytes: 65 }
        );
        assert_eq!(
            WebhookSecret::parse_list(" \t").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            WebhookSecret::parse_list(&format!("{VECTOR_SECRET} oops")).unwrap_err(),
            SecretError::MissingPrefix
        );
        let shown = format!("{:?}", secret());
        assert_eq!(shown, "WebhookSecret(redacted)");
        assert_eq!(VECTOR_SECRET.parse::<WebhookSecret>().map(|_| ()), Ok(()));
    }

    #[test]
    fn headers_are_read_by_name_and_must_be_present() {
        let present = |name: &'static str| match name {
            ID_HEADER => Some("r/n"),
            TIMESTAMP_HEADER => Some(" 1614265330 "),
            SIGNATURE_HEADER => Some(VECTOR_SIGNATURE),
            _ => None,
        };
        assert_eq!(
            WebhookHeaders::from_lookup(present),
            Ok(WebhookHeaders {
                id: "r/n",
                timestamp: "1614265330",
                signature: VECTOR_SIGNATURE
            })
        );
        for missing in [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER] {
            let lookup = |name: &'static str| {
                if name == missing {
                    Some("")
                } else {
                    present(name)
                }
            };
            assert_eq!(
                WebhookHeaders::from_lookup(lookup),
                Err(VerifyError::MissingHeader { header: missing })
            );
        }
    }
}
