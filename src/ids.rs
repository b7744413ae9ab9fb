//! Identifiers and timestamps: run ids, and the one grammar every name a client or a
//! planner chooses follows.
//!
//! # The identifier grammar
//!
//! Capability ids, facet names, runtime policy ids, HITL request ids and plan node ids are
//! identifiers, checked by [`check_id`] wherever they enter (HTTP requests, catalog
//! registration, envelope submission, planner replies):
//!
//! - 1 to [`MAX_ID_LEN`] (128) bytes; policy ids and node ids at most [`MAX_PREFIX_ID_LEN`]
//!   (117), because the engine names HITL requests after them (`{policyId}-{n}`,
//!   `{nodeId}-{attempt}`, with `n` and `attempt` 32-bit counters), and those names must be
//!   identifiers too;
//! - ASCII letters, digits, `_`, `-`, `:` and `@`, in segments joined by `.`: no segment is
//!   empty, so an identifier never starts or ends with a dot and never holds `..`;
//! - nothing else: no spaces, slashes, control characters or non-ASCII letters.
//!
//! [`ID_PATTERN`] is the same grammar as a regular expression (the OpenAPI `pattern`). Every
//! identifier is a URL path segment as it stands (RFC 3986 `pchar` without percent-encoding),
//! so `/v1/capabilities/{id}` never needs escaping and never names anything but one segment.
//!
//! ```
//! use flexrun::ids::{IdKind, IdProblem, check_id};
//!
//! assert!(check_id(IdKind::Capability, "capabilityId", "writer.en@2:beta").is_ok());
//! let err = check_id(IdKind::Capability, "capabilityId", "../../etc").unwrap_err();
//! assert_eq!(err.field(), "capabilityId");
//! assert_eq!(err.problem(), IdProblem::EmptySegment { at: 0 });
//! assert_eq!(
//!     err.to_string(),
//!     "capabilityId: invalid capability id \"../../etc\": empty segment at byte 0 (a `.` must sit between non-empty segments)"
//! );
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A run's id: a time-ordered UUIDv7, so store keys sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(Uuid);

impl RunId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id's 16 bytes (the store's key encoding).
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The creation time a UUIDv7 id carries (its first 48 bits, Unix milliseconds).
    pub fn created_millis(&self) -> u64 {
        self.as_bytes()[..6]
            .iter()
            .fold(0, |ms, byte| (ms << 8) | u64::from(*byte))
    }

    /// The smallest id whose creation time is `millis` or later: a key bound for time ranges.
    pub fn first_at(millis: u64) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        Self::from_bytes(bytes)
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for RunId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl Serialize for RunId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The longest identifier, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Bytes kept free for the `-<n>` suffix of generated HITL request ids: a dash and the ten
/// digits of the largest 32-bit counter.
pub const ID_SUFFIX_LEN: usize = 1 + 10;

/// The longest policy id or plan node id, in bytes: HITL request ids are made of them plus a
/// suffix of up to [`ID_SUFFIX_LEN`] bytes, and must stay within [`MAX_ID_LEN`].
pub const MAX_PREFIX_ID_LEN: usize = MAX_ID_LEN - ID_SUFFIX_LEN;

/// The identifier grammar as an ECMA-262 regular expression (the lengths aside).
pub const ID_PATTERN: &str = r"^[A-Za-z0-9_:@-]+(\.[A-Za-z0-9_:@-]+)*$";

/// What an identifier names; decides its length limit and how errors call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdKind {
    /// A capability's `capabilityId`.
    Capability,
    /// A facet's `name`.
    Facet,
    /// A runtime policy's `id` (at most [`MAX_PREFIX_ID_LEN`] bytes).
    Policy,
    /// A HITL request's id.
    HitlRequest,
    /// A plan node's `id` (at most [`MAX_PREFIX_ID_LEN`] bytes).
    Node,
}

impl IdKind {
    /// The longest identifier of this kind, in bytes.
    pub const fn max_len(self) -> usize {
        match self {
            Self::Policy | Self::Node => MAX_PREFIX_ID_LEN,
            Self::Capability | Self::Facet | Self::HitlRequest => MAX_ID_LEN,
        }
    }

    /// What errors call an identifier of this kind, e.g. `capability id`.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Capability => "capability id",
            Self::Facet => "facet name",
            Self::Policy => "policy id",
            Self::HitlRequest => "hitl request id",
            Self::Node => "node id",
        }
    }

    /// The grammar in words, with this kind's length limit.
    pub fn expected(self) -> String {
        format!(
            "1 to {} bytes of ASCII letters, digits, `_`, `-`, `:`, `@`, with `.` between non-empty segments",
            self.max_len()
        )
    }
}

/// The first way an identifier breaks the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdProblem {
    /// The identifier is empty.
    Empty,
    /// The identifier is longer than its kind allows.
    TooLong {
        /// Its length, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// A character outside the grammar.
    Char {
        /// Its byte offset.
        at: usize,
        /// The character.
        ch: char,
    },
    /// A `.` at the start or the end, or two in a row.
    EmptySegment {
        /// The byte offset of the empty segment.
        at: usize,
    },
}

impl fmt::Display for IdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty"),
            Self::TooLong { len, max } => write!(f, "{len} bytes long, at most {max} allowed"),
            Self::Char { at, ch } => write!(
                f,
                "{ch:?} at byte {at} is not allowed (use letters, digits, `_`, `-`, `:`, `@`, `.`)"
            ),
            Self::EmptySegment { at } => write!(
                f,
                "empty segment at byte {at} (a `.` must sit between non-empty segments)"
            ),
        }
    }
}

/// An identifier that breaks the grammar: which field, what kind, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {}", self.reason())]
pub struct IdError {
    field: String,
    kind: IdKind,
    problem: IdProblem,
    found: String,
}

impl IdError {
    /// The offending field, as a JSON path (`capabilityId`, `inputFacets[1]`,
    /// `policies.runtime[0].id`) or a JSON pointer into a planner reply (`/nodes/2/id`).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What the identifier names.
    pub fn kind(&self) -> IdKind {
        self.kind
    }

    /// What is wrong with it.
    pub fn problem(&self) -> IdProblem {
        self.problem
    }

    /// The identifier as given, quoted and escaped, shortened when long.
    pub fn found(&self) -> &str {
        &self.found
    }

    /// The message without the field: what kind of identifier, which one, what is wrong.
    pub fn reason(&self) -> String {
        format!(
            "invalid {} {}: {}",
            self.kind.noun(),
            self.found,
            self.problem
        )
    }
}

/// Longest prefix of a refused identifier quoted in an [`IdError`], in characters.
const FOUND_CHARS: usize = 48;

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '@')
}

/// Checks `value` against the identifier grammar (see the [module docs](self)) with the
/// length limit of `kind`.
///
/// # Errors
///
/// An [`IdError`] naming `field` and the first problem found: empty, too long, a character
/// outside the grammar, or an empty dotted segment.
pub fn check_id(kind: IdKind, field: &str, value: &str) -> Result<(), IdError> {
    let problem = id_problem(value, kind.max_len());
    match problem {
        None => Ok(()),
        Some(problem) => {
            let mut found: String = value.chars().take(FOUND_CHARS).collect();
            let cut = found.len() < value.len();
            found = format!("{found:?}");
            if cut {
                found.push('…');
            }
            Err(IdError {
                field: field.to_owned(),
                kind,
                problem,
                found,
            })
        }
    }
}

fn id_problem(value: &str, max: usize) -> Option<IdProblem> {
    if value.is_empty() {
        return Some(IdProblem::Empty);
    }
    if value.len() > max {
        return Some(IdProblem::TooLong {
            len: value.len(),
            max,
        });
    }
    let mut segment_start = 0;
    for (at, ch) in value.char_indices() {
        if ch == '.' {
            if at == segment_start {
                return Some(IdProblem::EmptySegment { at });
            }
            segment_start = at + 1;
        } else if !id_char(ch) {
            return Some(IdProblem::Char { at, ch });
        }
    }
    (segment_start == value.len()).then_some(IdProblem::EmptySegment { at: segment_start })
}

/// Milliseconds since the Unix epoch; serialized as an RFC 3339 string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = UNIX_EPOCH + Duration::from_millis(self.0);
        humantime::format_rfc3339_millis(t).fmt(f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let t = humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)?;
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_millis() as u64;
        Ok(Self(ms))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Valid identifiers: 1 to 6 dotted segments of grammar characters.
    fn valid_id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_:@-]{1,12}(\\.[A-Za-z0-9_:@-]{1,12}){0,5}"
    }

    fn problem(kind: IdKind, value: &str) -> Option<IdProblem> {
        check_id(kind, "f", value).err().map(|e| e.problem())
    }

    #[test]
    fn the_ids_of_the_examples_and_the_demo_catalog_are_valid() {
        for id in [
            "writer.en",
            "brief.structurer",
            "qa-gate",
            "copyVariants",
            "brief.tone",
            "editor-review-1",
            "hitl-after-writer.en-12",
            "writer.en@2",
            "ns:writer_v2",
            "n0",
        ] {
            assert_eq!(problem(IdKind::Capability, id), None, "{id}");
        }
    }

    #[test]
    fn each_problem_is_named_where_it_is() {
        use IdProblem::{Char, Empty, EmptySegment, TooLong};
        let cases: [(&str, IdProblem); 12] = [
            ("", Empty),
            ("../../etc", EmptySegment { at: 0 }),
            (".lead", EmptySegment { at: 0 }),
            ("trail.", EmptySegment { at: 6 }),
            ("a..b", EmptySegment { at: 2 }),
            ("a/b", Char { at: 1, ch: '/' }),
            ("has space", Char { at: 3, ch: ' ' }),
            (" padded", Char { at: 0, ch: ' ' }),
            ("line\nbreak", Char { at: 4, ch: '\n' }),
            (
                "caf\u{e9}",
                Char {
                    at: 3,
                    ch: '\u{e9}',
                },
            ),
            ("q?", Char { at: 1, ch: '?' }),
            ("a%2Fb", Char { at: 1, ch: '%' }),
        ];
        for (value, expected) in cases {
            assert_eq!(problem(IdKind::Facet, value), Some(expected), "{value:?}");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            problem(IdKind::Capability, &long),
            Some(TooLong { len: 129, max: 128 })
        );
        assert_eq!(problem(IdKind::Capability, &long[1..]), None);
    }

    #[test]
    fn policy_and_node_ids_leave_room_for_generated_hitl_request_ids() {
        assert_eq!(MAX_PREFIX_ID_LEN, 117);
        let longest = "p".repeat(IdKind::Policy.max_len());
        assert_eq!(problem(IdKind::Policy, &longest), None);
        assert!(matches!(
            problem(IdKind::Node, &format!("{longest}x")),
            Some(IdProblem::TooLong { len: 118, max: 117 })
        ));
        for counter in [1, u32::MAX] {
            let request_id = format!("{longest}-{counter}");
            assert_eq!(problem(IdKind::HitlRequest, &request_id), None);
        }
    }

    #[test]
    fn errors_name_the_field_and_quote_a_short_excerpt() {
        let huge = "y".repeat(1_000_001);
        let err = check_id(IdKind::Facet, "name", &huge).unwrap_err();
        assert_eq!(err.field(), "name");
        assert_eq!(err.kind(), IdKind::Facet);
        let message = err.to_string();
        assert!(message.len() < 200, "{message}");
        assert!(
            message.starts_with("name: invalid facet name \"yyy"),
            "{message}"
        );
        assert!(
            message.ends_with("…: 1000001 bytes long, at most 128 allowed"),
            "{message}"
        );
        let err = check_id(IdKind::Node, "/nodes/2/id", "a\u{7}b").unwrap_err();
        assert_eq!(err.found(), "\"a\\u{7}b\"");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn generated_ids_are_valid(id in valid_id()) {
            prop_assert_eq!(problem(IdKind::Capability, &id), None);
        }

        /// The OpenAPI `pattern` and `maxLength` accept exactly what `check_id` accepts.
        #[test]
        fn the_pattern_agrees_with_check_id(
            id in prop_oneof![
                valid_id(),
                "[A-Za-z0-9_:@./ %?#\\-]{0,16}",
                any::<String>(),
                "[a-z]{120,135}",
            ]
        ) {
            let schema = serde_json::json!({
                "type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "pattern": ID_PATTERN
            });
            let validator = jsonschema::validator_for(&schema).unwrap();
            let by_pattern = validator.is_valid(&serde_json::Value::String(id.clone()));
            prop_assert_eq!(by_pattern, problem(IdKind::Capability, &id).is_none(), "{:?}", id);
        }
    }

    #[cfg(feature = "client")]
    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A valid id is one URL path segment as it stands: parsing a URL that holds it
        /// neither escapes nor normalizes it, and it comes back out as the last segment.
        #[test]
        fn valid_ids_round_trip_through_url_paths(id in valid_id()) {
            let url = reqwest::Url::parse(&format!("http://127.0.0.1:8080/v1/capabilities/{id}"))
                .unwrap();
            prop_assert_eq!(url.path(), format!("/v1/capabilities/{id}"));
            let last = url.path_segments().and_then(|mut s| s.next_back());
            prop_assert_eq!(last, Some(id.as_str()));
            let mut joined = url.clone();
            joined.path_segments_mut().unwrap().pop().push(&id);
            prop_assert_eq!(joined, url);
        }
    }

    #[cfg(feature = "client")]
    #[test]
    fn what_the_grammar_refuses_does_not_survive_a_url() {
        let parse = |id: &str| {
            reqwest::Url::parse(&format!("http://127.0.0.1:8080/v1/capabilities/{id}"))
                .unwrap()
                .path()
                .to_owned()
        };
        assert_eq!(parse("../../etc"), "/etc");
        assert_eq!(parse("a/b"), "/v1/capabilities/a/b");
        assert_eq!(parse("has space"), "/v1/capabilities/has%20space");
    }

    #[test]
    fn run_id_round_trips_through_text_and_bytes() {
        let id = RunId::new();
        let text = id.to_string();
        assert_eq!(text.parse::<RunId>().unwrap(), id);
        assert_eq!(RunId::from_bytes(*id.as_bytes()), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<RunId>(&json).unwrap(), id);
    }

    #[test]
    fn timestamp_is_rfc3339_with_millis() {
        let ts = Timestamp(1_700_000_000_123);
        assert_eq!(ts.to_string(), "2023-11-14T22:13:20.123Z");
        let json = serde_json::to_string(&ts).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), ts);
    }
}
