//! `PolicyError`: why a raw policy document could not be normalized.

use crate::ids::IdError;

/// Why a raw policy document was refused.
///
/// Every variant names the JSON path of the offending field
/// (e.g. `runtime[0].trigger.kind`), available through [`PolicyError::path`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A field has the wrong JSON type or an out-of-range number.
    #[error("{path}: expected {expected}, found {found}")]
    InvalidType {
        /// Where.
        path: String,
        /// What was expected, e.g. `a positive integer`.
        expected: String,
        /// What was found, e.g. `string "3"`.
        found: String,
    },
    /// An object carries keys this version does not understand.
    #[error("{path}: unknown {noun} {}; expected {}", quote_list(keys), expected.join(", "))]
    UnknownKeys {
        /// The object holding the keys.
        path: String,
        /// `key` or `keys`.
        noun: &'static str,
        /// The unknown keys, in document order.
        keys: Vec<String>,
        /// The keys accepted there (canonical spellings).
        expected: Vec<&'static str>,
    },
    /// A required field is absent.
    #[error("{path}: missing required field")]
    Missing {
        /// Where the field was expected.
        path: String,
    },
    /// A string names no known variant (trigger kind, action type, capability kind, …).
    #[error("{path}: unknown {what} \"{value}\"; expected one of {}", expected.join(", "))]
    UnknownVariant {
        /// Where.
        path: String,
        /// What the string names, e.g. `trigger kind`.
        what: &'static str,
        /// The value given.
        value: String,
        /// The accepted spellings.
        expected: Vec<&'static str>,
    },
    /// An action that belongs to the contract's vocabulary but that this engine does not execute.
    #[error(
        "{path}: unsupported action \"{action}\"; this engine executes replan, hitl, pause and fail"
    )]
    UnsupportedAction {
        /// Where.
        path: String,
        /// The action type given (`goto`, `emit`).
        action: String,
    },
    /// Two runtime policies share an id.
    #[error("{path}: duplicate policy id \"{id}\" (first declared at {first})")]
    DuplicateId {
        /// Where the second declaration is.
        path: String,
        /// The id.
        id: String,
        /// Where the first declaration is.
        first: String,
    },
    /// The same setting is given twice (an alias and its canonical key, or a legacy and a
    /// canonical location), or two settings contradict each other.
    #[error("{path}: conflicts with {other}")]
    Conflict {
        /// One side.
        path: String,
        /// The other side.
        other: String,
    },
    /// A JSON-Logic condition does not compile.
    #[error("{path}: invalid json-logic condition: {message}")]
    InvalidCondition {
        /// Where.
        path: String,
        /// The compiler's explanation.
        message: String,
    },
    /// A policy id, or a capability or node id a policy names, breaks the identifier grammar
    /// (see [`crate::ids`]); its field is the path.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// A value has the right type but is not allowed (zero attempts, empty question, …).
    #[error("{path}: {message}")]
    InvalidValue {
        /// Where.
        path: String,
        /// What is wrong, lowercase.
        message: String,
    },
}

impl PolicyError {
    /// The JSON path of the offending field.
    pub fn path(&self) -> &str {
        match self {
            Self::InvalidType { path, .. }
            | Self::UnknownKeys { path, .. }
            | Self::Missing { path }
            | Self::UnknownVariant { path, .. }
            | Self::UnsupportedAction { path, .. }
            | Self::DuplicateId { path, .. }
            | Self::Conflict { path, .. }
            | Self::InvalidCondition { path, .. }
            | Self::InvalidValue { path, .. } => path,
            Self::InvalidId(e) => e.field(),
        }
    }
}

fn quote_list(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
