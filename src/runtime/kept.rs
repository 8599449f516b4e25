//! [`Kept`]: values a run holds in memory until after its shards (quarantined rows, bad input
//! lines), counted against the session's memory pool, so that a memory limit stops the run with
//! a clear error instead of the process running out.

use std::sync::{Arc, Mutex};

use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};

/// Values kept for later, and the memory they hold in the pool.
#[derive(Debug)]
pub struct Kept<T> {
    /// Names the pool's consumer (in an out-of-memory error).
    what: &'static str,
    kept: Mutex<(Vec<T>, Option<MemoryReservation>)>,
}

impl<T> Kept<T> {
    /// Nothing kept yet; `what` names it in the pool.
    pub fn new(what: &'static str) -> Self {
        Kept { what, kept: Mutex::new((Vec::new(), None)) }
    }

    /// Keeps `value`, of `bytes` in memory, if `pool` has room for it.
    pub fn keep(&self, value: T, bytes: usize, pool: &Arc<dyn MemoryPool>) -> Result<(), DataFusionError> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let reservation = kept.1.get_or_insert_with(|| MemoryConsumer::new(self.what).register(pool));
        reservation.try_grow(bytes)?;
        kept.0.push(value);
        Ok(())
    }

    /// Everything kept so far, its memory given back (a second call has nothing).
    pub fn take(&self) -> Vec<T> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reservation) = &mut kept.1 {
            reservation.free();
        }
        std::mem::take(&mut kept.0)
    }
}
