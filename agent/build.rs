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
//! it resident. `idle-order/<target>.txt` lists the functions an idle agent runs (an MQTT
//! input, a system input and the forwarder, profiled with callgrind by `scripts/idle-order`),
//! and LLD puts them first, so their pages are few and adjacent. Symbol names carry a hash
//! of the build (target, dependency versions, profile), hence one list per target; a name
//! the build no longer has is skipped, so a stale list costs memory, never correctness (the
//! `footprint` benchmark shows it). rustc links x86_64 glibc builds with its own LLD since
//! 1.90; the x86_64 musl build is pointed at the same LLD here. Other targets (aarch64 links
//! with Debian's cross GNU ld) keep the default order.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=idle-order");
    let env = |key: &str| std::env::var(key).unwrap_or_default();
    let target = env("TARGET");
    if env("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    if flags.contains("linker") || flags.contains("link-self-contained") {
        // Someone chose the linker: leave it alone.
        return;
    }
    let order = std::path::Path::new(&env("CARGO_MANIFEST_DIR"))
        .join("idle-order")
        .join(format!("{target}.txt"));
    let Some(sysroot) = rustc_sysroot(&env("RUSTC")) else {
        return;
    };
    // rustc's own LLD, behind the `ld.lld` its gcc-ld directory holds for the C compiler.
    let gcc_ld = sysroot
        .join("lib/rustlib")
        .join(env("HOST"))
        .join("bin/gcc-ld");
    let lld = match target.as_str() {
        "x86_64-unknown-linux-gnu" => true,
        "x86_64-unknown-linux-musl" if gcc_ld.join("ld.lld").is_file() => {
            println!("cargo:rustc-link-arg-bins=-B{}", gcc_ld.display());
            println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
            true
        }
        _ => false,
    };
    if lld && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// rustc's sysroot, if `rustc` answers and is 1.90 or later (LLD by default on x86_64 glibc).
fn rustc_sysroot(rustc: &str) -> Option<std::path::PathBuf> {
    let run = |arg: &str| {
        let out = std::process::Command::new(if rustc.is_empty() { "rustc" } else { rustc })
            .arg(arg)
            .output()
            .ok()?;
        String::from_utf8(out.stdout).ok()
    };
    // "rustc 1.95.0 (...)"
    let minor = run("--version")?
        .split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse::<u32>()
        .ok()?;
    if minor < 90 {
        return None;
    }
    Some(run("--print=sysroot")?.trim().into())
}
