//! Short-lived, per-run credentials for event streams, for clients that cannot send an
//! `Authorization` header (a browser's `EventSource`).
//!
//! `POST /v1/runs/{id}/events/token` (authenticated as usual) mints
//! `<expiry, Unix seconds>.<base64url HMAC-SHA256 of run id and expiry>`; the event stream of
//! that run accepts it as `?token=` until it expires. The key is derived from the server's
//! bearer token, so tokens survive a restart and die with a rotated bearer token. Request
//! spans record the path only, never the query, so a token does not reach the logs.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use crate::ids::RunId;

/// Longest lifetime a client may ask for, in seconds.
pub(crate) const MAX_TTL_SECS: u64 = 3600;
/// Lifetime when the client names none, in seconds.
pub(crate) const DEFAULT_TTL_SECS: u64 = 300;

/// Mints and checks stream tokens.
#[derive(Debug)]
pub(crate) struct StreamTokens {
    key: hmac::Key,
}

impl StreamTokens {
    /// The tokens of a server whose bearer token is `bearer`.
    pub(crate) fn new(bearer: &str) -> Self {
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bearer.as_bytes()),
            b"flexrun event-stream tokens v1",
        );
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    fn message(run: RunId, expires: u64) -> Vec<u8> {
        let mut message = run.as_bytes().to_vec();
        message.extend_from_slice(&expires.to_be_bytes());
        message
    }

    /// A token for `run` that expires at `expires` (Unix seconds).
    pub(crate) fn mint(&self, run: RunId, expires: u64) -> String {
        let tag = hmac::sign(&self.key, &Self::message(run, expires));
        format!("{expires}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Whether `token` was minted for `run` and has not expired at `now` (Unix seconds).
    pub(crate) fn check(&self, run: RunId, token: &str, now: u64) -> bool {
        let Some((expires, tag)) = token.split_once('.') else {
            return false;
        };
        let (Ok(expires), Ok(tag)) = (expires.parse::<u64>(), URL_SAFE_NO_PAD.decode(tag)) else {
            return false;
        };
        now < expires && hmac::verify(&self.key, &Self::message(run, expires), &tag).is_ok()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_run_until_it_expires_and_nothing_else() {
        let tokens = StreamTokens::new("s3cret");
        let (run, other) = (RunId::new(), RunId::new());
        let token = tokens.mint(run, 1_000);
        assert!(tokens.check(run, &token, 999));
        assert!(!tokens.check(run, &token, 1_000), "expired at its expiry");
        assert!(!tokens.check(other, &token, 999), "scoped to its run");
        assert!(
            !StreamTokens::new("rotated").check(run, &token, 999),
            "a new bearer token voids old stream tokens"
        );
        let (_, tag) = token.split_once('.').unwrap();
        assert!(
            !tokens.check(run, &format!("2000.{tag}"), 999),
            "the expiry is signed"
        );
        for bad in ["", "x", "1000", "1000.", "abc.def", "1000.!!!"] {
            assert!(!tokens.check(run, bad, 999), "{bad:?}");
        }
        assert!(
            StreamTokens::new("s3cret").check(run, &token, 999),
            "tokens survive a restart"
        );
    }
}
