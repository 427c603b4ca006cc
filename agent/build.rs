//! Links the agent as a position-dependent executable, with the code an idle agent runs
//! placed together (issue 18).
//!
//! **Position-dependent.** A position-independent executable is relocated when it starts: the
//! dynamic loader (or static-pie's own start code) writes every pointer in its
//! read-only-after-relocation data, which turns 1.3 MB of clean, shared file pages into
//! private anonymous memory, and reads a megabyte of relocation records to do it. Linked at a
//! fixed address, those pages stay clean and only the ones used are resident. The cost is
//! that the agent's own image is not randomised (ASLR still randomises the stack, the heap,
//! mmap and shared libraries), as with Go programs such as Telegraf, which are linked the
//! same way. On glibc targets the link is told so here; the static musl builds are compiled
//! without position independence instead (`relocation-model=static` in
//! `.cargo/config.toml`), since their start code would otherwise try to relocate a fixed
//! image.
//!
//! **Idle code together.** The kernel maps 64 KiB of a binary around every page a process
//! touches, so a few hundred functions spread over four megabytes of code keep nearly all of
//! it resident. `idle-order.txt` lists the functions an idle agent runs (an MQTT input, a
//! system input and the forwarder, profiled with callgrind: `scripts/idle-order`); LLD, the
//! linker rustc uses on x86_64 glibc, puts them first, so their pages are few and adjacent.
//! A name the build no longer has is skipped, so a stale list costs memory, never
//! correctness. Other linkers (GNU ld for musl and aarch64) do not take the option and get
//! the default order.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=idle-order.txt");
    let target = std::env::var("TARGET").unwrap_or_default();
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    if target == "x86_64-unknown-linux-gnu" && links_with_lld() {
        let order = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
            .join("idle-order.txt");
        if order.is_file() {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        }
    }
}

/// Whether rustc links this x86_64 glibc build with its own LLD: its default since 1.90,
/// unless the flags pick another linker.
fn links_with_lld() -> bool {
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("link-self-contained") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .unwrap_or_default();
    // "rustc 1.95.0 (...)"
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|minor| minor >= 90)
}
