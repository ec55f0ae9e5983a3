//! Where "now" comes from. The daemon uses the system clock; tests pass a
//! clock they can move forward to see an invite expire without waiting days.

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;

/// A source of the current time, cheap to clone.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(OffsetDateTime::now_utc))
    }

    /// A clock that asks `f` for the time.
    pub fn new(f: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The current time.
    pub fn now(&self) -> OffsetDateTime {
        (self.0)()
    }

    /// The current time in Unix seconds, as the store keeps times.
    pub fn now_secs(&self) -> i64 {
        self.now().unix_timestamp()
    }
}

/// Unix seconds, as the store keeps times, in RFC 3339 as answers and
/// listings show them (empty for a time out of range).
pub fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}
