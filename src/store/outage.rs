//! Write outages: the time during which a store cannot commit writes because
//! its storage failed (a full disk, an I/O error), and recovers from it
//! without a restart.
//!
//! An outage is not damage: nothing is wrong with what is stored, the disk
//! only refused to take more. It begins when a write fails on I/O, is logged
//! once at error level with what to do and counted
//! (`cedard_store_write_outages_total`), and ends when a probe write commits
//! again, logged with its duration. What a backend does meanwhile (refuse
//! writes, keep answering reads) is the backend's; this module keeps the
//! record and the messages, and knows nothing of files or HTTP.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// A write outage under way: the store cannot commit writes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutage {
    /// What failed, as first reported (the storage's own words).
    pub reason: String,
    /// When the first write failed.
    pub since: SystemTime,
}

impl WriteOutage {
    /// How long writes have not committed.
    pub fn duration(&self) -> Duration {
        self.since.elapsed().unwrap_or_default()
    }
}

/// The outage record of one store: at most one outage at a time.
#[derive(Debug, Default)]
pub(super) struct Outages {
    current: Mutex<Option<Ongoing>>,
}

#[derive(Debug)]
struct Ongoing {
    outage: WriteOutage,
    /// For the duration logged at the end (a monotonic clock, unlike
    /// `since`).
    started: Instant,
    /// Whether a write of this outage failed in a way that leaves its
    /// outcome unknown to the caller: whoever ends the outage must then read
    /// the store's revision afresh, since that write may have advanced it.
    unknown: bool,
}

impl Outages {
    fn state(&self) -> MutexGuard<'_, Option<Ongoing>> {
        // Nothing that can panic runs under this lock; a poisoned one still
        // holds a consistent record.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The outage under way, if any.
    pub(super) fn current(&self) -> Option<WriteOutage> {
        self.state().as_ref().map(|o| o.outage.clone())
    }

    /// Starts an outage of `store` (described for people: the data file, the
    /// database) because of `reason`. A second report while one is under way
    /// changes nothing: an outage is logged and counted once.
    pub(super) fn begin(&self, store: &str, reason: String) {
        let mut state = self.state();
        if state.is_some() {
            return;
        }
        tracing::error!(
            "writes to {store} cannot be committed: {reason}. Until they can, writes are refused \
             (503, nothing written) and /readyz is not ready; stored facts are still read from what \
             is on disk. Free space on its filesystem (or fix the I/O fault): cedard tries again \
             every second and resumes writing without a restart"
        );
        metrics::counter!("cedard_store_write_outages_total").increment(1);
        *state = Some(Ongoing {
            outage: WriteOutage {
                reason,
                since: SystemTime::now(),
            },
            started: Instant::now(),
            unknown: false,
        });
    }

    /// Notes that a write of the outage under way may or may not have
    /// committed (its caller was told so).
    pub(super) fn note_unknown(&self) {
        if let Some(o) = self.state().as_mut() {
            o.unknown = true;
        }
    }

    /// Whether a write of the outage under way has an unknown outcome.
    pub(super) fn has_unknown(&self) -> bool {
        self.state().as_ref().is_some_and(|o| o.unknown)
    }

    /// Ends the outage under way (writes commit again), logging how long it
    /// lasted.
    pub(super) fn end(&self, store: &str) {
        if let Some(o) = self.state().take() {
            tracing::info!(
                outage_ms = o.started.elapsed().as_millis(),
                "writes to {store} commit again: the write outage that began with `{}` is over after {:.1} s",
                o.outage.reason,
                o.started.elapsed().as_secs_f64()
            );
        }
    }
}
