//! `${VAR}` substitution over the whole value tree, so an error can name the key.

use config::{Value, ValueKind};

use super::ConfigError;

/// Replaces `${VAR}` in every string below `value`. `path` is the key path so far. In the
/// keys named in `optional`, an unset variable expands to nothing instead of failing (secrets
/// a command that sends nothing does not need).
pub(crate) fn substitute(
    value: &mut Value,
    path: &mut String,
    optional: &[&str],
    error: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    match &mut value.kind {
        ValueKind::String(text) if text.contains('$') => {
            *text = if optional.contains(&path.as_str()) {
                expand_with(text, |name| Some(std::env::var(name).unwrap_or_default()))
            } else {
                expand(text)
            }
            .map_err(|message| error(path, message))?;
        }
        ValueKind::Table(table) => {
            for (key, child) in table.iter_mut() {
                let saved = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                substitute(child, path, optional, error)?;
                path.truncate(saved);
            }
        }
        ValueKind::Array(items) => {
            for (index, child) in items.iter_mut().enumerate() {
                let saved = path.len();
                path.push_str(&format!("[{index}]"));
                substitute(child, path, optional, error)?;
                path.truncate(saved);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${VAR}`, `${VAR:-default}` and the escape `$${`.
pub(crate) fn expand(text: &str) -> Result<String, String> {
    expand_with(text, |name| std::env::var(name).ok())
}

fn expand_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            let expression = &tail[..end];
            let (name, default) = match expression.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expression, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "${{{expression}}} is not a valid variable reference"
                ));
            }
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!("environment variable {name} is not set"));
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand_with;

    fn lookup(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn expands_defaults_and_escapes() {
        assert_eq!(
            expand_with("Bearer ${TOKEN}", lookup).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(expand_with("${NOPE:-x}", lookup).unwrap(), "x");
        assert_eq!(expand_with("$${TOKEN} $5", lookup).unwrap(), "${TOKEN} $5");
        assert_eq!(
            expand_with("${NOPE}", lookup).unwrap_err(),
            "environment variable NOPE is not set"
        );
        assert!(expand_with("${TOKEN", lookup).is_err());
        assert!(expand_with("${A B}", lookup).is_err());
    }
}
