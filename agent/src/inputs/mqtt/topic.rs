//! MQTT topic filters (validation) and topic templates (levels to tags and the point name).


/// Checks a subscription filter against the MQTT rules, with a reason for the user.
/// Whether `topic` is one `filter` subscribes to (`+` one level, `#` the rest).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match part {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter may not be empty".into());
    }
    if filter.len() > 65_535 {
        return Err("a topic filter may not be longer than 65535 bytes".into());
    }
    if filter.contains('\0') {
        return Err("a topic filter may not contain NUL".into());
    }
    // A shared subscription `$share/<group>/<filter>` validates its inner filter.
    let inner = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, inner)) if !group.is_empty() && !group.contains(['+', '#']) => inner,
            _ => {
                return Err(format!(
                    "{filter:?}: a shared subscription is $share/<group>/<filter>"
                ));
            }
        },
        None => filter,
    };
    let levels: Vec<&str> = inner.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || index != levels.len().saturating_sub(1)) {
            return Err(format!(
                "{filter:?}: '#' must stand alone in the last level"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must stand alone in its level"));
        }
    }
    Ok(())
}

/// One level of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// Must equal the topic's level.
    Literal(String),
    /// Matches any one level and keeps nothing.
    Any,
    /// The level's value becomes this tag.
    Tag(String),
    /// The level's value becomes the point's name.
    Name,
    /// Matches the rest of the topic (only last).
    Rest,
}

/// A topic template such as `sensors/{device}/{name}`: `{tag}` levels become tags, `{name}`
/// becomes the point name, `+` skips a level, a final `#` accepts any further levels, and any
/// other level must match literally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    levels: Vec<Level>,
}

/// What a template takes from a topic.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TopicParts<'a> {
    pub name: Option<&'a str>,
    pub tags: Vec<(&'a str, &'a str)>,
}

impl TopicTemplate {
    /// Parses a template, naming what is wrong with it.
    pub fn parse(template: &str) -> Result<TopicTemplate, String> {
        let parts: Vec<&str> = template.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        let mut seen = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            let level = if let Some(inner) =
                part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                if inner.is_empty()
                    || !inner
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                {
                    return Err(format!(
                        "{{{inner}}}: a placeholder is a name of letters, digits, '_', '-' or '.'"
                    ));
                }
                if seen.contains(&inner) {
                    return Err(format!("{{{inner}}} appears twice"));
                }
                seen.push(inner);
                if inner == "name" {
                    Level::Name
                } else {
                    Level::Tag(inner.to_owned())
                }
            } else if *part == "+" {
                Level::Any
            } else if *part == "#" {
                if index != parts.len().saturating_sub(1) {
                    return Err("'#' may only be the last level".into());
                }
                Level::Rest
            } else if part.contains(['{', '}', '+', '#']) {
                return Err(format!(
                    "level {part:?} mixes text with a placeholder or wildcard; a level is one of text, {{tag}}, + or #"
                ));
            } else {
                Level::Literal((*part).to_owned())
            };
            levels.push(level);
        }
        Ok(TopicTemplate { levels })
    }

    /// Applies the template to a topic; `None` if the topic does not have its shape.
    pub fn apply<'a>(&'a self, topic: &'a str) -> Option<TopicParts<'a>> {
        let mut parts = TopicParts::default();
        let mut topic_levels = topic.split('/');
        for level in &self.levels {
            if *level == Level::Rest {
                return Some(parts);
            }
            let value = topic_levels.next()?;
            match level {
                Level::Literal(text) if text != value => return None,
                Level::Literal(_) | Level::Any | Level::Rest => {}
                Level::Tag(tag) => parts.tags.push((tag.as_str(), value)),
                Level::Name => parts.name = Some(value),
            }
        }
        topic_levels.next().is_none().then_some(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_a_broker_matches_them() {
        assert!(filter_matches("sensors/#", "sensors/d7/t"));
        assert!(filter_matches("sensors/#", "sensors"));
        assert!(filter_matches("sensors/+/t", "sensors/d7/t"));
        assert!(!filter_matches("sensors/+/t", "sensors/d7/x"));
        assert!(!filter_matches("sensors/+", "sensors/d7/t"));
        assert!(!filter_matches("a/b", "a"));
        assert!(filter_matches("a/b", "a/b"));
    }

    #[test]
    fn filters() {
        for good in ["a", "sensors/#", "+/x/+", "#", "$share/g/s/+", "a//b"] {
            assert!(validate_filter(good).is_ok(), "{good}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "$share/g", "$share//x", "x\0"] {
            assert!(validate_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn template_takes_tags_and_name() {
        let template = TopicTemplate::parse("sensors/{device}/{name}").unwrap();
        let parts = template.apply("sensors/d7/temperature").unwrap();
        assert_eq!(parts.name, Some("temperature"));
        assert_eq!(parts.tags, vec![("device", "d7")]);
        assert_eq!(template.apply("sensors/d7"), None);
        assert_eq!(template.apply("sensors/d7/t/extra"), None);
        assert_eq!(template.apply("actuators/d7/t"), None);

        let rest = TopicTemplate::parse("+/{site}/#").unwrap();
        assert_eq!(
            rest.apply("x/north/a/b").unwrap().tags,
            vec![("site", "north")]
        );
        assert_eq!(rest.apply("x/north").unwrap().tags, vec![("site", "north")]);
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(
            TopicTemplate::parse("a/{x}/{x}")
                .unwrap_err()
                .contains("twice")
        );
        assert!(TopicTemplate::parse("a/#/b").is_err());
        assert!(TopicTemplate::parse("a/dev{x}").is_err());
        assert!(TopicTemplate::parse("a/{}").is_err());
    }
}
