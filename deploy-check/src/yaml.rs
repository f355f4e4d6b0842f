//! YAML files as `serde_json::Value`s, the form every other check works on.

use serde::Deserialize as _;
use serde_json::Value;

/// Every document of a (multi-document) YAML text, with merge keys (`<<`)
/// applied, empty documents left out.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let mut value = serde_norway::Value::deserialize(document)
            .map_err(|error| format!("document {index}: {error}"))?;
        merge_fully(&mut value).map_err(|error| format!("document {index}: {error}"))?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value)
            .map_err(|error| format!("document {index}: not JSON-compatible: {error}"))?;
        documents.push(json);
    }
    Ok(documents)
}

/// The one document of a YAML file.
pub fn document(text: &str) -> Result<Value, String> {
    let mut documents = documents(text)?;
    match documents.len() {
        1 => Ok(documents.remove(0)),
        count => Err(format!("expected one YAML document, found {count}")),
    }
}

/// Applies merge keys until none is left. `apply_merge` resolves one level:
/// a merged mapping that has a `<<` of its own (an anchor built on another
/// anchor, as compose files do) brings that key along, and YAML loaders such
/// as compose's resolve it too. Explicit keys win over merged ones at every
/// level, as in YAML.
fn merge_fully(value: &mut serde_norway::Value) -> Result<(), String> {
    // Each round removes a level of nesting; anchors nest a few levels deep.
    for _ in 0..16 {
        if !has_merge_key(value) {
            return Ok(());
        }
        value.apply_merge().map_err(|error| error.to_string())?;
    }
    Err("merge keys nested more than 16 levels deep".to_owned())
}

fn has_merge_key(value: &serde_norway::Value) -> bool {
    match value {
        serde_norway::Value::Mapping(mapping) => {
            mapping.contains_key("<<") || mapping.values().any(has_merge_key)
        }
        serde_norway::Value::Sequence(sequence) => sequence.iter().any(has_merge_key),
        serde_norway::Value::Tagged(tagged) => has_merge_key(&tagged.value),
        _ => false,
    }
}

/// Plain (unquoted) scalar values that YAML 1.1 reads as something else than
/// the YAML 1.2 parser used here does: `yes`/`no`/`on`/`off`/`y`/`n` are
/// booleans and `0644` is octal for Kubernetes' YAML 1.1 decoder. Quoting
/// them makes both agree. Returns "line N: text" for each.
pub fn yaml11_ambiguities(text: &str) -> Vec<String> {
    const BOOLEAN_WORDS: [&str; 6] = ["y", "yes", "n", "no", "on", "off"];
    let mut found = Vec::new();
    let mut in_block_scalar: Option<usize> = None;
    for (number, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if let Some(block_indent) = in_block_scalar {
            if line.trim().is_empty() || indent > block_indent {
                continue;
            }
            in_block_scalar = None;
        }
        let content = line.trim();
        if content.starts_with('#') || content.is_empty() {
            continue;
        }
        let value = match content.split_once(": ") {
            Some((_, value)) => value,
            None => match content.strip_prefix("- ") {
                Some(item) => item,
                None => continue,
            },
        };
        let value = value.split(" #").next().unwrap_or(value).trim();
        if value.starts_with('|') || value.starts_with('>') {
            in_block_scalar = Some(indent);
            continue;
        }
        let lower = value.to_ascii_lowercase();
        let octal = value.len() > 1
            && value.starts_with('0')
            && value
                .chars()
                .all(|c| c.is_ascii_digit() && c != '8' && c != '9');
        if BOOLEAN_WORDS.contains(&lower.as_str()) || octal {
            found.push(format!("line {}: {content}", number + 1));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_merge_keys_are_resolved_with_explicit_keys_winning() {
        let text = "
base: &base
  a: 1
  b: 1
middle: &middle
  <<: *base
  b: 2
  c: 2
top:
  <<: *middle
  c: 3
";
        let value = document(text).unwrap();
        assert_eq!(value["top"], serde_json::json!({"a": 1, "b": 2, "c": 3}));
    }

    #[test]
    fn yaml11_booleans_and_octals_are_found_outside_block_scalars() {
        let text = "a: yes\nb: \"yes\"\nc: 0644\nd: |\n  on: off\ne:\n  - off\nf: 8080\n";
        let found = yaml11_ambiguities(text);
        assert_eq!(
            found,
            vec!["line 1: a: yes", "line 3: c: 0644", "line 7: - off"]
        );
    }
}
