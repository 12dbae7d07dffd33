//! The per-principal rate limit: requests per second with a burst allowance.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use poem::http::StatusCode;

use crate::error::ApiError;

type KeyedLimiter =
    RateLimiter<String, governor::state::keyed::DefaultKeyedStateStore<String>, DefaultClock>;

/// Requests per second per principal, with a burst allowance.
pub struct Limiter {
    inner: KeyedLimiter,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            inner: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        })
    }

    pub fn check(&self, principal: &str) -> Result<(), ApiError> {
        self.inner
            .check_key(&principal.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Too many requests",
                    "rate limit exceeded for this principal",
                )
                .retry_after(secs.max(1))
            })
    }

    /// Forgets principals that have been quiet; run periodically.
    pub fn forget_idle(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refuses_past_the_burst_with_retry_after() {
        let limiter = Limiter::new(1, 2).unwrap();
        assert!(limiter.check("user:1").is_ok());
        assert!(limiter.check("user:1").is_ok());
        let refused = limiter.check("user:1").unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (429, "rate_limited")
        );
        assert!(refused.retry_after.unwrap() >= 1);
        // another principal has its own allowance
        assert!(limiter.check("user:2").is_ok());
        assert!(Limiter::new(0, 10).is_none());
    }
}
