//! Disk space held back for the buffer's own housekeeping, so a full disk cannot stop the
//! agent from deleting what the collector confirmed.
//!
//! On a full disk SQLite can deadlock itself: a delete needs room in the WAL; the WAL can be
//! reused only after a checkpoint has copied it into the database; and the checkpoint needs
//! room to grow the database by the pages the WAL added. So the buffer keeps a file of
//! `buffer.disk_reserve` bytes (`buffer.reserve`, allocated for real, not sparse) beside the
//! database. When a write fails with "disk full", [`Reserve::release`] deletes it, the buffer
//! checkpoints (the database grows into the freed room and the WAL can be reused from its
//! start) and tries again. Once the file system has twice the reserve free again,
//! [`Reserve::ensure`] puts it back.
//!
//! File-system work only: callers run it where the store runs, on the blocking pool.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The reserve file's name in `agent.data_dir`.
pub const RESERVE_FILE: &str = "buffer.reserve";

/// With the reserve off, the disk counts as having room again once this much is free.
pub const ROOM_WITHOUT_RESERVE: u64 = 16 << 20;

/// The held-back space.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    /// Bytes to hold; 0 switches the reserve off.
    size: u64,
}

impl Reserve {
    /// The reserve of `size` bytes beside the buffer at `buffer` (not created yet).
    pub fn new(buffer: &Path, size: u64) -> Reserve {
        let dir = buffer.parent().unwrap_or(Path::new("."));
        Reserve {
            path: dir.join(RESERVE_FILE),
            size,
        }
    }

    /// Whether the reserve file is there, at its full size.
    pub fn held(&self) -> bool {
        self.size > 0 && std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.size)
    }

    /// Makes sure the reserve is held: creates it if it is missing and the file system has
    /// at least twice its size free (so taking it back does not fill the disk again at once).
    /// Returns whether the disk has room: the reserve is held (or, with the reserve off, at
    /// least [`ROOM_WITHOUT_RESERVE`] is free).
    pub fn ensure(&self) -> bool {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let free = || {
            rustix::fs::statvfs(dir)
                .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
                .unwrap_or(0)
        };
        if self.size == 0 {
            return free() >= ROOM_WITHOUT_RESERVE;
        }
        if self.held() {
            return true;
        }
        if free() < self.size.saturating_mul(2) {
            return false;
        }
        match self.allocate() {
            Ok(()) => true,
            Err(_) => {
                // A partial file holds space without being the reserve: give it back.
                let _ = std::fs::remove_file(&self.path);
                false
            }
        }
    }

    /// Writes the file with real blocks: `fallocate` where the file system has it, else
    /// zeros (a sparse file would reserve nothing).
    fn allocate(&self) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&self.path)?;
        let allocated =
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.size);
        if allocated.is_err() {
            let zeros = vec![0u8; 64 << 10];
            let mut left = self.size;
            while left > 0 {
                let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
                file.write_all(zeros.get(..n).unwrap_or(&zeros))?;
                left = left.saturating_sub(n as u64);
            }
        }
        file.sync_all()
    }

    /// Whether the disk has room besides the reserve: at least the reserve's size free (with
    /// the reserve off, [`ROOM_WITHOUT_RESERVE`]). Until it has, the buffer takes the disk
    /// for full.
    pub fn room_beside(&self) -> bool {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let free = rustix::fs::statvfs(dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0);
        let wanted = if self.size == 0 {
            ROOM_WITHOUT_RESERVE
        } else {
            self.size
        };
        free >= wanted
    }

    /// Gives the space back to the file system; returns whether there was any to give.
    pub fn release(&self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_real_space_taken_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(&dir.path().join("buffer.db"), 1 << 20);
        assert!(!reserve.held());
        assert!(reserve.ensure());
        assert!(reserve.held());
        let metadata = std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap();
        assert_eq!(metadata.len(), 1 << 20);
        // Allocated blocks, not a hole.
        use std::os::unix::fs::MetadataExt;
        assert!(metadata.blocks() * 512 >= 1 << 20);
        assert!(reserve.release());
        assert!(!reserve.held());
        assert!(!reserve.release());
        // Off: nothing is ever held; room is free space.
        let off = Reserve::new(&dir.path().join("buffer.db"), 0);
        let _ = off.ensure();
        assert!(!off.held());
        assert!(!dir.path().join(RESERVE_FILE).exists());
    }
}
