//! Idempotency keys: a retried request gets the answer of the one it repeats.
//!
//! A client sends a key of its choosing with a request that changes something (creating a run,
//! answering a HITL request, a signal, cancel, pause, resume). The engine stores the key, a
//! fingerprint of the request and what it led to in the same transaction as the change itself,
//! so a retry — also after a restart — is answered from that record instead of being applied
//! again. The same key with a different request is refused; keys expire after
//! [`EngineConfig::idempotency_ttl`](super::EngineConfig::idempotency_ttl).
//!
//! One key space covers every operation: the fingerprint names the operation, the run and the
//! request's content, so reusing a key for anything else is a mismatch. Only requests that
//! were applied are remembered: one that was refused changed nothing, and retrying it is safe.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::HitlAnswer;
use crate::ids::RunId;
use crate::policy::Budgets;

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// A client's idempotency key: 1 to [`MAX_KEY_LEN`] bytes of visible ASCII (`!` to `~`), as
/// sent in the `Idempotency-Key` header. UUIDs are a good choice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks `key` against the grammar.
    ///
    /// # Errors
    /// What is wrong with it, for a message naming the field.
    pub fn new(key: impl Into<String>) -> Result<Self, String> {
        let key = key.into();
        if key.is_empty() {
            return Err("an idempotency key must not be empty".to_owned());
        }
        if key.len() > MAX_KEY_LEN {
            return Err(format!(
                "an idempotency key has at most {MAX_KEY_LEN} bytes, this one {}",
                key.len()
            ));
        }
        if let Some(c) = key.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "an idempotency key is visible ASCII (`!` to `~`); found {c:?}"
            ));
        }
        Ok(Self(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request that changes a run: what [`Engine::steer`](super::Engine::steer) applies.
#[derive(Debug, Clone, PartialEq)]
pub enum Steer {
    /// Answer a pending HITL request.
    Answer {
        /// The request.
        request_id: String,
        /// The answer.
        answer: HitlAnswer,
    },
    /// Send an external signal; `manual` policies may fire on it.
    Signal {
        /// Signal name.
        name: String,
        /// Free-form payload (`policyId` routes it to one policy).
        payload: Value,
    },
    /// Cancel the run.
    Cancel {
        /// Why.
        reason: String,
    },
    /// Pause an executing run.
    Pause {
        /// Why.
        reason: String,
    },
    /// Resume a paused run.
    Resume {
        /// Why.
        reason: String,
        /// Budgets to raise (or set) with the resume, by resource; empty for none.
        budgets: Budgets,
    },
}

impl Steer {
    /// The operation's name, as fingerprinted.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::Answer { .. } => "answer",
            Self::Signal { .. } => "signal",
            Self::Cancel { .. } => "cancel",
            Self::Pause { .. } => "pause",
            Self::Resume { .. } => "resume",
        }
    }

    fn content(&self) -> Value {
        match self {
            Self::Answer { request_id, answer } => {
                json!({"requestId": request_id, "answer": answer})
            }
            Self::Signal { name, payload } => json!({"name": name, "payload": payload}),
            Self::Cancel { reason } | Self::Pause { reason } => json!({"reason": reason}),
            Self::Resume { reason, budgets } if budgets.is_empty() => json!({"reason": reason}),
            Self::Resume { reason, budgets } => json!({"reason": reason, "budgets": budgets}),
        }
    }

    pub(crate) fn fingerprint(&self, run: RunId) -> String {
        fingerprint(self.operation(), Some(run), &self.content())
    }
}

/// The hex SHA-256 of the operation, the run and the request's canonical JSON (object keys
/// sorted), so equal requests match however their bodies were formatted.
pub(crate) fn fingerprint(operation: &str, run: Option<RunId>, content: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    hasher.update([0]);
    if let Some(run) = run {
        hasher.update(run.as_bytes());
    }
    hasher.update([0]);
    hasher.update(content.to_string().as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The key and fingerprint of a request being applied, for the record written with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingRequest {
    pub(crate) key: String,
    pub(crate) fingerprint: String,
}

/// Keys whose request is being applied right now: a second request with the same key waits
/// for nothing and is refused, so two concurrent retries cannot both apply.
#[derive(Debug, Default, Clone)]
pub(crate) struct Claims(Arc<Mutex<HashSet<String>>>);

impl Claims {
    /// Claims `key` until the returned guard drops; `None` when it is already claimed.
    pub(crate) fn claim(&self, key: &IdempotencyKey) -> Option<Claim> {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        held.insert(key.0.clone()).then(|| Claim {
            claims: self.clone(),
            key: key.0.clone(),
        })
    }
}

/// A held key; released on drop.
#[derive(Debug)]
pub(crate) struct Claim {
    claims: Claims,
    key: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(IdempotencyKey::new("0190c6f2-8d7e-7a1b-9c3d-4e5f60718293").is_ok());
        assert!(IdempotencyKey::new("a").is_ok());
        assert!(IdempotencyKey::new("k".repeat(MAX_KEY_LEN)).is_ok());
        for bad in ["", "with space", "tab\t", "é"] {
            assert!(IdempotencyKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::new("k".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn fingerprints_ignore_formatting_but_not_content_operation_or_run() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": [1, 2]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "a":[1,2],"b":1 }"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"a": [2, 1], "b": 1}"#).unwrap();
        let run = RunId::new();
        assert_eq!(
            fingerprint("create", None, &a),
            fingerprint("create", None, &b)
        );
        assert_ne!(
            fingerprint("create", None, &a),
            fingerprint("create", None, &c)
        );
        assert_ne!(
            fingerprint("cancel", Some(run), &a),
            fingerprint("pause", Some(run), &a)
        );
        assert_ne!(
            fingerprint("cancel", Some(run), &a),
            fingerprint("cancel", Some(RunId::new()), &a)
        );
        assert_eq!(fingerprint("create", None, &a).len(), 64);
    }

    #[test]
    fn a_claimed_key_is_refused_until_released() {
        let claims = Claims::default();
        let key = IdempotencyKey::new("k-1").unwrap();
        let held = claims.claim(&key).unwrap();
        assert!(claims.claim(&key).is_none());
        assert!(claims.claim(&IdempotencyKey::new("k-2").unwrap()).is_some());
        drop(held);
        assert!(claims.claim(&key).is_some());
    }
}
