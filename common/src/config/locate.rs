//! Finds the line of a key path like `inputs.mqtt[0].qos` in the parsed TOML document.

use std::ops::Range;

use toml_edit::{Document, Item, Table, Value};

/// The 1-based line of byte `offset` in `text`.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some(rest) = indices.strip_prefix('[') {
            let Some(end) = rest.find(']') else { break };
            if let Ok(index) = rest[..end].parse() {
                out.push(Segment::Index(index));
            }
            indices = &rest[end + 1..];
        }
    }
    out
}

/// Where the walk through the document stands.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    /// The child named by `segment`, with the span that best marks it.
    fn child(self, segment: &Segment<'_>) -> Option<(Option<Range<usize>>, Node<'a>)> {
        match (self, segment) {
            (Node::Item(Item::Table(table)), _) => Node::Table(table).child(segment),
            (Node::Item(Item::Value(value)), _) => Node::Value(value).child(segment),
            (Node::Table(table), Segment::Key(key)) => {
                let (k, v) = table.get_key_value(key)?;
                Some((k.span(), Node::Item(v)))
            }
            (Node::Value(Value::InlineTable(table)), Segment::Key(key)) => {
                let (k, v) = table.get_key_value(key)?;
                Some((k.span(), Node::Item(v)))
            }
            (Node::Item(Item::ArrayOfTables(array)), Segment::Index(index)) => {
                let table = array.get(*index)?;
                Some((table.span(), Node::Table(table)))
            }
            (Node::Value(Value::Array(array)), Segment::Index(index)) => {
                let value = array.get(*index)?;
                Some((value.span(), Node::Value(value)))
            }
            _ => None,
        }
    }
}

/// The line of the deepest part of `path` that exists in the document.
pub(crate) fn line_of(doc: &Document<String>, path: &str) -> Option<usize> {
    let text = doc.raw();
    let mut best = None;
    let mut node = Node::Table(doc.as_table());
    for segment in segments(path) {
        let Some((span, next)) = node.child(&segment) else {
            break;
        };
        if let Some(span) = span {
            best = Some(line_at(text, span.start));
        }
        node = next;
    }
    best
}

/// Whether the value at `path` is a string with a `${VAR}` in it (its type is known only once
/// it is expanded).
pub(crate) fn holds_variable(doc: &Document<String>, path: &str) -> bool {
    let mut node = Node::Table(doc.as_table());
    for segment in segments(path) {
        let Some((_, next)) = node.child(&segment) else {
            return false;
        };
        node = next;
    }
    match node {
        Node::Item(Item::Value(Value::String(text))) | Node::Value(Value::String(text)) => {
            text.value().contains("${")
        }
        _ => false,
    }
}
