//! The store as Prometheus sees it, and Prometheus' wire formats.
//!
//! Naming: a stored series `(name, tags, field)` is the metric `<name>_<field>`, as Telegraf's
//! Prometheus output names it, except that the field `value` gives the metric `<name>`
//! alone (Telegraf does the same). Characters outside `[a-zA-Z0-9_:]` become `_` (and a
//! leading digit gets a `_` before it). Tags are labels, the agent's id (`agent`) included.
//!
//! Samples that came in through remote write keep their metric name: `__name__` is stored as
//! the series' name and the sample in the field `value`, so the metric reads back as it was
//! written. Their labels are its tags; a label `agent` of their own would be taken by the
//! writer's id, so it is kept as `exported_agent` (Prometheus' `honor_labels = false` way).

pub mod remote;

/// The field a Prometheus sample is stored in; its series' metric is the name alone.
pub const VALUE_FIELD: &str = "value";
/// The label that carries the agent's id.
pub const AGENT_LABEL: &str = "agent";
/// Where a series' own `agent` label goes.
pub const EXPORTED_AGENT_LABEL: &str = "exported_agent";

/// The metric name of the stored series `name` / `field`.
pub fn metric_name(name: &str, field: &str) -> String {
    if field == VALUE_FIELD {
        sanitize(name, true)
    } else {
        sanitize(&format!("{name}_{field}"), true)
    }
}

/// A label name for the tag `key`: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn label_name(key: &str) -> String {
    sanitize(key, false)
}

fn sanitize(text: &str, colons: bool) -> String {
    let mut out = String::with_capacity(text.len().saturating_add(1));
    for (index, c) in text.chars().enumerate() {
        let keep = c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':');
        if index == 0 && c.is_ascii_digit() {
            out.push('_');
        }
        out.push(if keep { c } else { '_' });
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_telegrafs_prometheus_output() {
        assert_eq!(metric_name("cpu", "usage_idle"), "cpu_usage_idle");
        assert_eq!(
            metric_name("http_requests_total", "value"),
            "http_requests_total"
        );
        assert_eq!(metric_name("disk.io", "read-bytes"), "disk_io_read_bytes");
        assert_eq!(metric_name("node:load", "x"), "node:load_x");
        assert_eq!(metric_name("1wire", "temp"), "_1wire_temp");
        assert_eq!(metric_name("température", "value"), "temp_rature");
        assert_eq!(label_name("host.name"), "host_name");
        assert_eq!(label_name("a:b"), "a_b");
        assert_eq!(label_name(""), "_");
    }
}
