//! `tributary-agent test` for a file input.

use std::collections::BTreeMap;
use std::fs::File;

use tributary_wire::Point;

use super::FileConfig;
use super::points::PointMaker;
use super::tail::Tail;
use crate::buffer::Ingest;

/// For `tributary-agent test`: the first `limit` records of each matching file, read from the
/// start, as the points they would become; and notes on what was found.
pub fn sample(
    config: &FileConfig,
    agent_tags: &BTreeMap<String, String>,
    limit: usize,
) -> (Vec<Point>, Vec<String>) {
    let mut points = Vec::new();
    let mut notes = Vec::new();
    let mut found = 0;
    for pattern in &config.patterns {
        let Ok(paths) = glob::glob(pattern) else {
            continue;
        };
        for path in paths.filter_map(Result::ok).filter(|p| p.is_file()) {
            found += 1;
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) => {
                    notes.push(format!("{}: cannot open: {e}", path.display()));
                    continue;
                }
            };
            let Ok(mut tail) = Tail::open(&path, file, 0, (0, [0; 8]), String::new()) else {
                continue;
            };
            let mut records = Vec::new();
            while records.len() < limit {
                match tail.read_chunk() {
                    Ok(0) | Err(_) => {
                        tail.records(
                            config.multiline.as_ref(),
                            config.max_line,
                            true,
                            &mut records,
                        );
                        break;
                    }
                    Ok(_) => tail.records(
                        config.multiline.as_ref(),
                        config.max_line,
                        false,
                        &mut records,
                    ),
                }
            }
            records.truncate(limit);
            let path_text = path.to_string_lossy();
            let maker = PointMaker::new(config, &path_text, agent_tags);
            let mut ingest = Ingest::default();
            let at = tributary_wire::time::now_ns();
            for record in records {
                match record {
                    Ok(record) => maker.push(&record.bytes, at, &mut ingest),
                    Err(record) => notes.push(format!(
                        "{}: would quarantine a record longer than max_line ({} bytes)",
                        path.display(),
                        record.bytes.len()
                    )),
                }
            }
            for reject in ingest.rejects {
                notes.push(format!(
                    "{}: would quarantine: {}",
                    path.display(),
                    reject.reason
                ));
            }
            points.extend(
                ingest
                    .points
                    .iter()
                    .filter_map(|bytes| tributary_wire::codec::decode_point(bytes).ok()),
            );
            notes.push(format!(
                "{}: showing up to {limit} records from the start",
                path.display()
            ));
        }
    }
    if found == 0 {
        notes.push(format!("no file matches {}", config.patterns.join(", ")));
    }
    (points, notes)
}
