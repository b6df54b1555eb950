//! `${VAR}` substitution, done on the raw text before parsing so it works in any string.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvError {
    #[error("environment variable {0} is referenced as ${{{0}}} but not set")]
    Missing(String),
    #[error("unterminated ${{ at byte {0} of a configuration string")]
    Unterminated(usize),
}

/// Applies [`substitute`] to every string in a parsed document; an error comes with the path of
/// the field it is in (`models[0].api_key`), `path` being that of `value`.
pub(crate) fn substitute_strings(
    value: &mut toml::Value,
    path: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), (String, EnvError)> {
    match value {
        toml::Value::String(text) if text.contains('$') => {
            *text = substitute(text, lookup).map_err(|error| (path.to_string(), error))?;
        }
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                substitute_strings(item, &format!("{path}[{index}]"), lookup)?;
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let inner = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                substitute_strings(item, &inner, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replaces each `${NAME}` with `lookup(NAME)`. `$$` stays a literal `$`.
pub fn substitute(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(EnvError::Unterminated(text.len() - rest.len() + at))?;
            let name = &body[..end];
            out.push_str(&lookup(name).ok_or_else(|| EnvError::Missing(name.to_string()))?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "KEY").then(|| "sk-123".to_string())
    }

    #[test]
    fn replaces_known_variables() {
        assert_eq!(substitute("a = \"${KEY}\"", lookup), Ok("a = \"sk-123\"".into()));
    }

    #[test]
    fn missing_variable_is_an_error_naming_it() {
        assert_eq!(substitute("${NOPE}", lookup), Err(EnvError::Missing("NOPE".into())));
    }

    #[test]
    fn dollar_without_brace_and_escaped_dollar_are_kept() {
        assert_eq!(substitute("price $5 and $${KEY}", lookup), Ok("price $5 and ${KEY}".into()));
    }

    #[test]
    fn unterminated_reference_is_an_error() {
        assert!(matches!(substitute("x ${KEY", lookup), Err(EnvError::Unterminated(2))));
    }
}
