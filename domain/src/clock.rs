//! The clock every rule reads. Both engines store microseconds, so times are
//! truncated to that on the way in: a stored row then hashes and compares
//! exactly as it was written.

use chrono::{DateTime, SubsecRound, Utc};

/// Timestamps are kept to the microsecond, the precision both engines store,
/// so a stored entry hashes to the same value it was written with.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Epoch milliseconds, for times the code compares (leases, expiries,
/// cooldowns): they compare the same way on both engines.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}
