//! Record cutting; rotation, truncation and crashes are covered end to end (tests/e2e/tail.rs).

use super::*;

fn tail(file: &tempfile::NamedTempFile) -> Tail {
    let f = File::open(file.path()).unwrap();
    Tail::open(file.path(), f, 0, (0, [0; 8]), "k".into()).unwrap()
}

fn cut(
    tail: &mut Tail,
    bytes: &[u8],
    multiline: Option<&Regex>,
    max: usize,
    flush: bool,
) -> Vec<Result<String, String>> {
    tail.buf.extend_from_slice(bytes);
    let mut out = Vec::new();
    tail.records(multiline, max, flush, &mut out);
    out.into_iter()
        .map(|r| match r {
            Ok(r) => Ok(String::from_utf8(r.bytes).unwrap()),
            Err(r) => Err(String::from_utf8(r.bytes).unwrap()),
        })
        .collect()
}

#[test]
fn a_partial_line_waits_for_its_newline_and_offsets_follow_records() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut t = tail(&file);
    assert_eq!(
        cut(&mut t, b"one\ntw", None, 1024, false),
        [Ok("one".into())]
    );
    assert_eq!(t.offset, 4);
    assert_eq!(
        cut(&mut t, b"o\r\nthree\n", None, 1024, false),
        [Ok("two".into()), Ok("three".into())]
    );
    assert_eq!(t.offset, 15);
    assert!(t.buf.is_empty());
}

#[test]
fn multiline_records_start_at_the_pattern_and_flush_when_quiet() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut t = tail(&file);
    let start = Regex::new(r"^\d{4}-").unwrap();
    let text = b"2026-01-01 boom\n  at a()\n  at b()\n2026-01-01 next\n  at c()\n";
    assert_eq!(
        cut(&mut t, text, Some(&start), 1024, false),
        [Ok("2026-01-01 boom\n  at a()\n  at b()".into())]
    );
    // The second record is pending until the next start line or a flush; its bytes are not
    // covered by the offset yet.
    assert_eq!(t.offset, 34);
    assert_eq!(
        cut(&mut t, b"", Some(&start), 1024, true),
        [Ok("2026-01-01 next\n  at c()".into())]
    );
    assert_eq!(t.offset, text.len() as u64);
}

#[test]
fn oversized_lines_are_quarantined_not_dropped() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut t = tail(&file);
    let long = "x".repeat(100);
    let out = cut(&mut t, format!("ok\n{long}").as_bytes(), None, 64, false);
    assert_eq!(out[0], Ok("ok".into()));
    assert!(matches!(&out[1], Err(head) if head.len() == 100));
    // The rest of the long line is skipped up to its newline; the next line is whole.
    assert_eq!(
        cut(&mut t, b"yyy\nafter\n", None, 64, false),
        [Ok("after".into())]
    );
    assert_eq!(t.offset, 3 + 100 + 4 + 6);
}

#[test]
fn saved_positions_round_trip() {
    let saved = SavedPosition {
        offset: 12_345,
        fingerprint_len: 256,
        fingerprint: [7; 8],
    };
    assert_eq!(SavedPosition::decode(&saved.encode()), Some(saved));
    assert_eq!(SavedPosition::decode(b"short"), None);
}

#[test]
fn check_names_bad_globs_and_patterns() {
    let message = crate::config::tests::error("[[inputs.file]]\npaths = [\"/var/log/[x.log\"]\n");
    assert!(
        message.contains("inputs.file[0].paths[0]") && message.contains("not a valid glob"),
        "{message}"
    );
    let message =
        crate::config::tests::error("[[inputs.file]]\npaths = [\"/x\"]\nmultiline_start = \"(\"\n");
    assert!(
        message.contains("inputs.file[0].multiline_start"),
        "{message}"
    );
    let message = crate::config::tests::error(
        "[[inputs.file]]\npaths = [\"/x\"]\n[[inputs.file]]\npaths = [\"/x\"]\n",
    );
    assert!(message.contains("inputs.file[1].id"), "{message}");
}
