//! The JSON text of a model reply, for callers that read it as plain JSON (the `llm`
//! executor); plan replies go through `PlanResponse::from_text`.

/// The JSON text of a reply, without the Markdown fence some servers add when they do not
/// enforce the schema.
pub(crate) fn unfenced(content: &str) -> &str {
    let t = content.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_removed() {
        assert_eq!(unfenced("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(unfenced("  {\"a\":1} "), "{\"a\":1}");
    }
}
