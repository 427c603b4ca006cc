//! Handing freed memory back to the system when the agent is idle (issue 18).
//!
//! glibc's allocator raises its mmap and trim thresholds after a large block is freed (a batch
//! buffer, a compression context) and from then on keeps up to that much freed memory at the
//! top of its heap: about a megabyte of an idle agent's RSS. Fixing the thresholds gave it
//! back but cost the busy path CPU (BENCHMARKS.md, "Edge footprint"), so instead the forwarder
//! calls [`release_freed`] once it has had nothing to send for a while. musl's allocator
//! returns freed pages by itself; there this does nothing.

/// Returns the allocator's free memory to the system (`malloc_trim(0)` on glibc).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only gives free memory of the allocator back to the system; it
        // takes the allocator's own locks, so it is safe from any thread at any time.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
