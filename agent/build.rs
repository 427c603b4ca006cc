//! Links the agent as a position-dependent executable (issue 18).
//!
//! A position-independent executable is relocated when it starts: the dynamic loader (or
//! static-pie's own start code) writes every pointer in its read-only-after-relocation data,
//! which turns 1.3 MB of clean, shared file pages into private anonymous memory, and reads a
//! megabyte of relocation records to do it. Linked at a fixed address, those pages stay clean
//! and only the ones used are resident. The cost is that the agent's own image is not
//! randomised (ASLR still randomises the stack, the heap, mmap and shared libraries), as with
//! Go programs such as Telegraf, which are linked the same way.
///
/// On glibc targets the link is told so here; the static musl builds are compiled without
/// position independence instead (`relocation-model=static` in `.cargo/config.toml`), since
/// their start code would otherwise try to relocate a fixed image.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
