//! The ingest memory budget: one bound on what requests hold in memory at once, from the body
//! as received to the decoded batch waiting for (and inside) the storage writer.
//!
//! A request reserves before it takes memory, and waits (up to `server.ingest_wait`, then
//! 429) while the budget is spent:
//!
//! 1. the body as received: its `Content-Length` (413 past `server.max_body_size`), or the
//!    limit when the client does not say;
//! 2. before decoding: room for the decompressed body (`server.max_decompressed_size`, when
//!    the body is compressed) and the decoded batch (`server.max_decoded_size`);
//! 3. once decoded, the reservation shrinks to the batch's estimated size
//!    (`tributary_wire::decode`), which travels with the batch to the writer and is given back
//!    when the batch is freed after its commit.
//!
//! So the writer queue is bounded by decoded bytes, not by a count of batches whose size nobody
//! checked, and `server.ingest_memory` bounds the whole (README: "Memory").

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;

/// The budget is counted in KiB, so one reservation (a `u32` of permits) may be up to 4 TiB.
const UNIT: usize = 1024;

/// What all ingest requests may hold at once.
pub struct IngestMemory {
    permits: Arc<Semaphore>,
    total_units: usize,
    wait: Duration,
}

/// Memory a request holds; given back when dropped.
#[derive(Debug)]
pub struct MemoryPermit {
    permit: OwnedSemaphorePermit,
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).max(1)
}

impl IngestMemory {
    /// A budget of `bytes`, for which a request waits up to `wait`.
    pub fn new(bytes: usize, wait: Duration) -> IngestMemory {
        let total_units = units(bytes).min(Semaphore::MAX_PERMITS);
        IngestMemory {
            permits: Arc::new(Semaphore::new(total_units)),
            total_units,
            wait,
        }
    }

    /// Reserves `bytes`, waiting while the budget is spent; `Busy` (429) if it stays spent.
    pub async fn reserve(&self, bytes: usize) -> Result<MemoryPermit, ApiError> {
        let wanted = u32::try_from(units(bytes).min(self.total_units)).map_err(|_| {
            ApiError::TooLarge(format!("{bytes} bytes is more than one request may hold"))
        })?;
        let permits = Arc::clone(&self.permits);
        match tokio::time::timeout(self.wait, permits.acquire_many_owned(wanted)).await {
            Ok(Ok(permit)) => Ok(MemoryPermit { permit }),
            Ok(Err(_)) => Err(ApiError::Unavailable(
                "the collector is shutting down".into(),
            )),
            Err(_) => Err(ApiError::Busy),
        }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.total_units
            .saturating_sub(self.permits.available_permits())
            .saturating_mul(UNIT)
    }

    /// The whole budget in bytes.
    pub fn total(&self) -> usize {
        self.total_units.saturating_mul(UNIT)
    }
}

impl MemoryPermit {
    /// Gives back what is held past `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = units(bytes);
        let held = self.permit.num_permits();
        if held > keep {
            drop(self.permit.split(held.saturating_sub(keep)));
        }
    }

    /// Takes `other` into this permit, to be given back together.
    pub fn merge(&mut self, other: MemoryPermit) {
        self.permit.merge(other.permit);
    }

    /// The permit itself, to travel with a batch to the storage writer.
    pub fn into_inner(self) -> OwnedSemaphorePermit {
        self.permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paused time: the wait before Busy is exactly `ingest_wait`, without sleeping for it.
    #[tokio::test(start_paused = true)]
    async fn reservations_wait_shrink_and_refuse() {
        let memory = IngestMemory::new(10 * UNIT, Duration::from_millis(50));
        let mut first = memory.reserve(8 * UNIT).await.unwrap();
        assert_eq!(memory.in_use(), 8 * UNIT);
        // Not enough left: waits its time, then Busy.
        let started = tokio::time::Instant::now();
        assert!(matches!(
            memory.reserve(4 * UNIT).await,
            Err(ApiError::Busy)
        ));
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        first.shrink_to(UNIT + 1);
        assert_eq!(memory.in_use(), 2 * UNIT);
        let second = memory.reserve(4 * UNIT).await.unwrap();
        first.merge(second);
        assert_eq!(memory.in_use(), 6 * UNIT);
        drop(first);
        assert_eq!(memory.in_use(), 0);
        // More than the whole budget is capped to it, so it can still be served alone.
        let all = memory.reserve(100 * UNIT).await.unwrap();
        assert_eq!(memory.in_use(), memory.total());
        drop(all);
    }
}
