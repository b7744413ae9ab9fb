//! Catalog DTOs: facets and capabilities as registered and as sent to planners.

use serde::{Deserialize, Serialize};

/// Which way a facet may flow through a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FacetDirection {
    /// Only consumed by nodes (supplied by run inputs or upstream).
    Input,
    /// Only produced by nodes.
    Output,
    /// Both consumed and produced.
    Bidirectional,
}

impl FacetDirection {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
            Self::Bidirectional => "bidirectional",
        }
    }

    /// True when nodes may consume the facet (`input` or `bidirectional`).
    pub fn allows_input(self) -> bool {
        match self {
            Self::Input | Self::Bidirectional => true,
            Self::Output => false,
        }
    }

    /// True when nodes may produce the facet (`output` or `bidirectional`).
    pub fn allows_output(self) -> bool {
        match self {
            Self::Output | Self::Bidirectional => true,
            Self::Input => false,
        }
    }
}

/// A named piece of run data with a JSON-Schema fragment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Facet {
    /// Unique name, e.g. `copyVariants`.
    pub name: String,
    /// Short title.
    #[serde(default)]
    pub title: String,
    /// What the facet holds.
    #[serde(default)]
    pub description: String,
    /// Allowed direction.
    pub direction: FacetDirection,
    /// JSON-Schema fragment for the facet's value.
    pub schema: serde_json::Value,
    /// Instructions for producers of the facet.
    #[serde(default)]
    pub instructions: String,
    /// Whether the facet is required in a compiled contract by default.
    #[serde(default = "default_true")]
    pub required_by_default: bool,
}

fn default_true() -> bool {
    true
}

/// The kind of work a capability does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityKind {
    /// Turns objectives into structured briefs.
    Structuring,
    /// Does the main work.
    Execution,
    /// Checks other nodes' work.
    Validation,
    /// Reshapes data.
    Transformation,
    /// Chooses between paths.
    Routing,
}

impl CapabilityKind {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Structuring => "structuring",
            Self::Execution => "execution",
            Self::Validation => "validation",
            Self::Transformation => "transformation",
            Self::Routing => "routing",
        }
    }
}

/// Who performs a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentType {
    /// A model or program.
    Ai,
    /// A person (nodes become HITL requests).
    Human,
}

/// Whether a capability may be used by new plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityStatus {
    /// Usable.
    #[default]
    Active,
    /// Registered but not usable.
    Inactive,
}

impl CapabilityStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }
}

/// How nodes of a capability are executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecutorSpec {
    /// A handler compiled into the binary, by name.
    Builtin {
        /// The handler's registered name.
        handler: String,
    },
    /// A webhook that receives the context bundle.
    Http {
        /// Where to POST.
        url: String,
    },
    /// An OpenAI-compatible model call.
    Llm {
        /// Model name; the engine default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// Capability-level instructions.
        #[serde(default)]
        instructions: String,
    },
    /// Becomes a HITL request.
    Human,
}

/// Something that can execute a plan node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capability {
    /// Unique id, e.g. `writer.en`.
    pub capability_id: String,
    /// Semantic version.
    #[serde(default = "default_version")]
    pub version: String,
    /// Display name.
    #[serde(default)]
    pub display_name: String,
    /// One-line summary for planners.
    #[serde(default)]
    pub summary: String,
    /// The kind of work.
    pub kind: CapabilityKind,
    /// Who performs it.
    #[serde(default = "default_agent")]
    pub agent_type: AgentType,
    /// Facets consumed.
    #[serde(default)]
    pub input_facets: Vec<String>,
    /// Facets produced.
    #[serde(default)]
    pub output_facets: Vec<String>,
    /// Relative cost, for planners that optimise.
    #[serde(default)]
    pub cost: f64,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per node before the node fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How nodes run.
    pub executor: ExecutorSpec,
    /// Active or inactive.
    #[serde(default)]
    pub status: CapabilityStatus,
}

impl Capability {
    /// True when the capability may be used by new plans.
    pub fn is_active(&self) -> bool {
        self.status == CapabilityStatus::Active
    }

    /// True when the capability declares `facet` among its input facets.
    pub fn consumes(&self, facet: &str) -> bool {
        self.input_facets.iter().any(|f| f == facet)
    }

    /// True when the capability declares `facet` among its output facets.
    pub fn produces(&self, facet: &str) -> bool {
        self.output_facets.iter().any(|f| f == facet)
    }
}

fn default_version() -> String {
    "1.0.0".to_owned()
}

fn default_agent() -> AgentType {
    AgentType::Ai
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_max_attempts() -> u32 {
    1
}
