//! `tributary-bench`: benchmark scenarios (see BENCHMARKS.md).
fn main() {
    eprintln!("benchmarks are not written yet");
}
