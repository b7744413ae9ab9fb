//! The built-in demo catalog: a handful of facets and builtin capabilities that do real,
//! deterministic text work, so the engine runs end to end offline.
//!
//! `brief.structurer` turns a free-text brief into a structured writer brief,
//! `writer.en` writes copy variants from it, `writer.formal` is a costlier alternative,
//! `qa.copy` checks the variants, `keywords.extract` and `copy.summarizer` derive more facets.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::catalog::{Capability, CapabilityKind, ExecutorSpec, Facet, FacetDirection};
use crate::engine::{EngineConfig, ExecError, Executors, NodeCall};
use crate::planner::CatalogPlanner;
use crate::store::Store;

fn facet(name: &str, title: &str, direction: FacetDirection, schema: Value) -> Facet {
    Facet::new(name, schema)
        .with_direction(direction)
        .with_title(title)
        .with_description(title)
}

/// The demo facets.
pub fn facets() -> Vec<Facet> {
    use FacetDirection as D;
    vec![
        facet(
            "objectiveBrief",
            "Free-text brief from the client",
            D::Input,
            json!({"type": "string", "minLength": 1}),
        ),
        facet(
            "writerBrief",
            "Structured brief for writers",
            D::Bidirectional,
            json!({"type": "object",
                   "properties": {"audience": {"type": "string"},
                                  "tone": {"type": "string", "enum": ["playful", "formal", "neutral"]},
                                  "keyPoints": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
                   "required": ["audience", "tone", "keyPoints"]}),
        )
        .with_instructions("Name the audience, pick a tone and list the key points."),
        facet(
            "copyVariants",
            "Copy variants",
            D::Bidirectional,
            json!({"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}),
        )
        .with_instructions("Write short, distinct variants."),
        facet(
            "qaReport",
            "Quality report on the copy",
            D::Output,
            json!({"type": "object",
                   "properties": {"passed": {"type": "boolean"}, "score": {"type": "number", "minimum": 0, "maximum": 1},
                                  "issues": {"type": "array", "items": {"type": "string"}}},
                   "required": ["passed", "score", "issues"]}),
        )
        .with_instructions("Check length, emptiness and coverage of the key points."),
        facet(
            "keywords",
            "Keywords of the brief",
            D::Bidirectional,
            json!({"type": "array", "items": {"type": "string"}}),
        ),
        facet(
            "summary",
            "One-line summary of the copy",
            D::Output,
            json!({"type": "string"}),
        ),
    ]
}

/// A builtin capability of the demo: display name = id, 5 s timeout, two attempts.
fn capability(
    id: &str,
    kind: CapabilityKind,
    handler: &str,
    cost: f64,
    summary: &str,
) -> Capability {
    let executor = ExecutorSpec::Builtin {
        handler: handler.to_owned(),
    };
    Capability::new(id, kind, executor)
        .with_display_name(id)
        .with_summary(summary)
        .with_cost(cost)
        .with_timeout_ms(5_000)
        .with_max_attempts(2)
}

/// The demo capabilities.
pub fn capabilities() -> Vec<Capability> {
    use CapabilityKind as K;
    vec![
        capability(
            "brief.structurer",
            K::Structuring,
            "structure_brief",
            1.0,
            "Turns a free-text brief into a structured writer brief",
        )
        .with_input_facets(["objectiveBrief"])
        .with_output_facets(["writerBrief"]),
        capability(
            "writer.en",
            K::Execution,
            "write_copy",
            2.0,
            "Writes three English copy variants",
        )
        .with_input_facets(["writerBrief"])
        .with_output_facets(["copyVariants"]),
        capability(
            "writer.formal",
            K::Execution,
            "write_formal",
            3.0,
            "Writes formal English copy variants",
        )
        .with_input_facets(["writerBrief"])
        .with_output_facets(["copyVariants"]),
        capability(
            "qa.copy",
            K::Validation,
            "qa_copy",
            1.0,
            "Checks copy variants against the brief",
        )
        .with_input_facets(["copyVariants", "writerBrief"])
        .with_output_facets(["qaReport"]),
        capability(
            "keywords.extract",
            K::Transformation,
            "extract_keywords",
            0.5,
            "Extracts keywords from the brief",
        )
        .with_input_facets(["objectiveBrief"])
        .with_output_facets(["keywords"]),
        capability(
            "copy.summarizer",
            K::Transformation,
            "summarize",
            0.5,
            "Summarises the copy in one line",
        )
        .with_input_facets(["copyVariants"])
        .with_output_facets(["summary"]),
    ]
}

/// The demo's builtin handlers (plus `noop`, used by the benchmark).
pub fn executors() -> Executors {
    Executors::new()
        .builtin("structure_brief", structure_brief)
        .builtin("write_copy", |call| write_copy(call, false))
        .builtin("write_formal", |call| write_copy(call, true))
        .builtin("qa_copy", qa_copy)
        .builtin("extract_keywords", extract_keywords)
        .builtin("summarize", summarize)
        .builtin_async("noop", |call: NodeCall| async move { noop(&call) })
}

/// An engine config over `store` with the demo catalog and the catalog planner.
pub fn config(store: Arc<dyn Store>) -> EngineConfig {
    let mut config = EngineConfig::new(store, Arc::new(CatalogPlanner));
    config.executors = executors();
    config.facets = facets();
    config.capabilities = capabilities();
    config
}

fn input_str<'a>(call: &'a NodeCall, facet: &str) -> Result<&'a str, ExecError> {
    call.inputs
        .get(facet)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ExecError::fatal(
                "MISSING_INPUT",
                format!("input facet `{facet}` is missing or not a string"),
            )
        })
}

fn out(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

const STOPWORDS: &[&str] = &[
    "a", "an", "and", "the", "for", "of", "to", "in", "on", "with", "our", "we", "is", "are",
    "that", "this", "it", "its", "as", "at", "by", "be", "or", "from", "who", "their", "about",
    "your", "you", "new",
];

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric() && c != '-')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

fn structure_brief(call: &NodeCall) -> Result<Map<String, Value>, ExecError> {
    let brief = input_str(call, "objectiveBrief")?;
    let lower = brief.to_lowercase();
    let audience = lower
        .split_once(" for ")
        .map(|(_, rest)| {
            rest.split([',', '.', ';'])
                .next()
                .unwrap_or(rest)
                .trim()
                .to_owned()
        })
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "general readers".to_owned());
    let tone = if ["fun", "playful", "friendly", "kids", "!"]
        .iter()
        .any(|w| lower.contains(w))
    {
        "playful"
    } else if ["formal", "bank", "legal", "enterprise", "investor"]
        .iter()
        .any(|w| lower.contains(w))
    {
        "formal"
    } else {
        "neutral"
    };
    let mut key_points: Vec<String> = brief
        .split(['.', ',', ';'])
        .map(str::trim)
        .filter(|s| s.len() > 2)
        .filter(|s| {
            let l = s.to_lowercase();
            !l.starts_with("for ") && !l.ends_with(" tone")
        })
        .map(str::to_owned)
        .collect();
    if key_points.is_empty() {
        key_points.push(brief.trim().to_owned());
    }
    key_points.truncate(4);
    Ok(out([(
        "writerBrief",
        json!({"audience": audience, "tone": tone, "keyPoints": key_points}),
    )]))
}

fn brief_parts(call: &NodeCall) -> Result<(String, String, Vec<String>), ExecError> {
    let brief = call
        .inputs
        .get("writerBrief")
        .ok_or_else(|| ExecError::fatal("MISSING_INPUT", "input facet `writerBrief` is missing"))?;
    let audience = brief["audience"].as_str().unwrap_or("everyone").to_owned();
    let tone = brief["tone"].as_str().unwrap_or("neutral").to_owned();
    let points = brief["keyPoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok((audience, tone, points))
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn write_copy(call: &NodeCall, formal: bool) -> Result<Map<String, Value>, ExecError> {
    let (audience, tone, points) = brief_parts(call)?;
    let lead = capitalize(
        points
            .first()
            .map(String::as_str)
            .unwrap_or("something new"),
    );
    let second = points.get(1).map(|p| p.to_lowercase());
    let variants = if formal || tone == "formal" {
        vec![
            format!("{lead}. Designed for {audience}."),
            match &second {
                Some(second) => format!("Introducing {}: {second}.", lead.to_lowercase()),
                None => format!("Introducing {}.", lead.to_lowercase()),
            },
            format!("For {audience}, we present {}.", lead.to_lowercase()),
        ]
    } else if tone == "playful" {
        vec![
            format!("{lead}! Made for {audience}."),
            format!("Psst, {audience}: {}!", lead.to_lowercase()),
            match &second {
                Some(second) => format!("{lead}, {second}. What's not to love?"),
                None => format!("{lead}. What's not to love?"),
            },
        ]
    } else {
        vec![
            format!("{lead} for {audience}."),
            match &second {
                Some(second) => format!("{lead}: {second}."),
                None => format!("{lead}, every day."),
            },
            format!("Meet {}, built for {audience}.", lead.to_lowercase()),
        ]
    };
    Ok(out([("copyVariants", json!(variants))]))
}

fn qa_copy(call: &NodeCall) -> Result<Map<String, Value>, ExecError> {
    let (_, _, points) = brief_parts(call)?;
    let variants: Vec<String> = call
        .inputs
        .get("copyVariants")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let key_words: Vec<String> = points
        .iter()
        .flat_map(|p| words(p).collect::<Vec<_>>())
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect();
    let mut issues = Vec::new();
    let mut good = 0usize;
    for (i, v) in variants.iter().enumerate() {
        let mut ok = true;
        if v.chars().count() > 120 {
            issues.push(format!("variant {} is longer than 120 characters", i + 1));
            ok = false;
        }
        if !words(v).any(|w| key_words.contains(&w)) {
            issues.push(format!("variant {} mentions no key point", i + 1));
            ok = false;
        }
        if ok {
            good += 1;
        }
    }
    let score = if variants.is_empty() {
        0.0
    } else {
        good as f64 / variants.len() as f64
    };
    Ok(out([(
        "qaReport",
        json!({"passed": issues.is_empty(), "score": score, "issues": issues}),
    )]))
}

fn extract_keywords(call: &NodeCall) -> Result<Map<String, Value>, ExecError> {
    let brief = input_str(call, "objectiveBrief")?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for w in words(brief).filter(|w| w.len() > 2 && !STOPWORDS.contains(&w.as_str())) {
        *counts.entry(w).or_default() += 1;
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let top: Vec<String> = ranked.into_iter().take(5).map(|(w, _)| w).collect();
    Ok(out([("keywords", json!(top))]))
}

fn summarize(call: &NodeCall) -> Result<Map<String, Value>, ExecError> {
    let variants: Vec<&str> = call
        .inputs
        .get("copyVariants")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let shortest = variants
        .iter()
        .min_by_key(|v| v.len())
        .ok_or_else(|| ExecError::fatal("MISSING_INPUT", "no copy variants to summarise"))?;
    Ok(out([(
        "summary",
        json!(format!("{} variants; shortest: {shortest}", variants.len())),
    )]))
}

fn noop(call: &NodeCall) -> Result<Map<String, Value>, ExecError> {
    Ok(out([(
        "stepResult",
        json!({"step": call.node_id, "ok": true}),
    )]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{AgentType, CapabilityStatus};
    use crate::ids::RunId;

    fn call(inputs: Value) -> NodeCall {
        NodeCall {
            run_id: RunId::new(),
            node_id: "n".into(),
            attempt: 1,
            idempotency_key: "k".into(),
            capability_id: "c".into(),
            objective: "o".into(),
            instructions: vec![],
            inputs: inputs.as_object().cloned().unwrap_or_default(),
            output_schema: std::sync::Arc::new(Value::Null),
            executor: None,
            usage: Default::default(),
        }
    }

    #[test]
    fn the_catalog_is_what_the_builders_say() {
        let writer = capabilities()
            .into_iter()
            .find(|c| c.capability_id == "writer.en")
            .unwrap();
        assert_eq!(
            writer,
            Capability {
                capability_id: "writer.en".into(),
                version: "1.0.0".into(),
                display_name: "writer.en".into(),
                summary: "Writes three English copy variants".into(),
                kind: CapabilityKind::Execution,
                agent_type: AgentType::Ai,
                input_facets: vec!["writerBrief".into()],
                output_facets: vec!["copyVariants".into()],
                cost: 2.0,
                timeout_ms: 5_000,
                max_attempts: 2,
                fallback: None,
                executor: ExecutorSpec::Builtin {
                    handler: "write_copy".into()
                },
                status: CapabilityStatus::Active,
            }
        );
        let facets = facets();
        let copy = facets.iter().find(|f| f.name == "copyVariants").unwrap();
        assert_eq!(
            (copy.title.as_str(), copy.description.as_str()),
            ("Copy variants", "Copy variants")
        );
        assert_eq!(copy.instructions, "Write short, distinct variants.");
        assert!(facets.iter().all(|f| f.required_by_default));
        assert_eq!(
            facets.iter().filter(|f| f.instructions.is_empty()).count(),
            3
        );
        assert!(capabilities().iter().all(|c| c.timeout_ms == 5_000
            && c.max_attempts == 2
            && c.display_name == c.capability_id
            && c.is_active()));
    }

    #[test]
    fn handlers_do_deterministic_text_work() {
        let brief = structure_brief(&call(json!({"objectiveBrief": "Fresh sourdough baked daily, for busy parents. Playful tone"}))).unwrap();
        let wb = &brief["writerBrief"];
        assert_eq!(wb["audience"], "busy parents");
        assert_eq!(wb["tone"], "playful");
        assert_eq!(wb["keyPoints"], json!(["Fresh sourdough baked daily"]));
        let copy = write_copy(&call(json!({"writerBrief": wb})), false).unwrap();
        let variants = copy["copyVariants"].as_array().unwrap();
        assert_eq!(variants.len(), 3);
        assert_eq!(
            variants[0],
            "Fresh sourdough baked daily! Made for busy parents."
        );
        let qa = qa_copy(&call(json!({"writerBrief": wb, "copyVariants": variants}))).unwrap();
        assert_eq!(qa["qaReport"]["passed"], true, "{qa:?}");
        let bad = qa_copy(&call(json!({"writerBrief": wb, "copyVariants": ["zzz"]}))).unwrap();
        assert_eq!(bad["qaReport"]["score"], 0.0);
        assert_eq!(
            bad["qaReport"]["issues"][0],
            "variant 1 mentions no key point"
        );
        let kw = extract_keywords(&call(
            json!({"objectiveBrief": "Sourdough bread, sourdough rolls for parents"}),
        ))
        .unwrap();
        assert_eq!(kw["keywords"][0], "sourdough");
    }
}
