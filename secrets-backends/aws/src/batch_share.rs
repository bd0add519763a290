//! Whether `fetch_many` batches, chosen by the request budget.
//!
//! BatchGetSecretValue's quota is 100 requests per second per account and Region, a hundredth of
//! the 10,000 that GetSecretValue and DescribeSecret share ("AWS Secrets Manager quotas"). A
//! process whose budget is its share of the read quota is given the same share of the batch
//! quota: a budget of `r` requests per second with bursts of `b` allows `r / 100` batches per
//! second with bursts of `b / 100`. While that share has room for a whole batch, reads are
//! batched (one request for twenty); when it has not, the ids are read one by one, each within
//! the budget, rather than sending a batch that a fleet's other processes have already used up
//! the quota for (1,000 pods with 10 requests/s each have 0.1 batch/s each: at a restart, 900 of
//! their 1,000 batches would be refused). The default budget (the whole read quota) leaves room
//! for 100 batches at once; an unbudgeted client always batches. A budget cut by throttling cuts
//! the batch share with it (rate and burst alike): before, the share kept the budget's full
//! rate, and a throttled process went on batching as if nothing had been refused.

use std::sync::Mutex;
use std::time::Instant;

use keyrack_core::RequestBudget;

/// BatchGetSecretValue's quota over GetSecretValue's.
const BATCH_QUOTA_SHARE: f64 = 100.0 / 10_000.0;

/// The batch share's token bucket (full at the first use).
#[derive(Debug, Default)]
pub(crate) struct BatchShare {
    state: Mutex<Option<(f64, Instant)>>,
}

impl BatchShare {
    /// Whether one batch may be sent at `now` under `budget` (`None`: unbudgeted) whose rate is
    /// `rate_now` (the budget's own, or less once throttling cut it), taking its room if so.
    pub(crate) fn take(
        &self,
        budget: Option<RequestBudget>,
        rate_now: Option<f64>,
        now: Instant,
    ) -> bool {
        let Some(budget) = budget else {
            return true;
        };
        let cut = rate_now.map_or(1.0, |r| (r / budget.rate()).clamp(0.0, 1.0));
        let rate = budget.rate() * cut * BATCH_QUOTA_SHARE;
        let capacity = f64::from(budget.burst()) * cut * BATCH_QUOTA_SHARE;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = state.get_or_insert((capacity, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * rate).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyrack_core::{Clock, ManualClock};
    use std::time::Duration;

    #[test]
    fn the_default_budget_batches_and_a_small_share_reads_one_by_one() {
        let now = ManualClock::new().now();
        let share = BatchShare::default();
        // Unbudgeted: always.
        assert!((0..1_000).all(|_| share.take(None, None, now)));
        // The whole read quota: 100 batches at once, then one per 10 ms.
        let whole = RequestBudget::per_second(10_000);
        let share = BatchShare::default();
        assert_eq!(
            (0..150)
                .filter(|_| share.take(Some(whole), None, now))
                .count(),
            100
        );
        assert!(share.take(Some(whole), None, now + Duration::from_millis(10)));
        assert!(!share.take(Some(whole), None, now + Duration::from_millis(10)));
        // 10 requests/s (a thousandth of the quota): 0.1 batch of burst, never a whole one.
        let small = RequestBudget::per_second(10);
        let share = BatchShare::default();
        assert!((0..100).all(|i| !share.take(Some(small), None, now + Duration::from_secs(i))));
        // 500/s: bursts of 5 batches, then 5 per second.
        let mid = RequestBudget::per_second(500);
        let share = BatchShare::default();
        assert_eq!(
            (0..10).filter(|_| share.take(Some(mid), None, now)).count(),
            5
        );
        assert!(!share.take(Some(mid), None, now + Duration::from_millis(100)));
        assert!(share.take(Some(mid), None, now + Duration::from_millis(200)));
        // The whole quota cut to half by throttling: 50 batches at once, then one per 20 ms.
        // (Before, the share kept the budget's rate: 100 at once, one per 10 ms.)
        let share = BatchShare::default();
        let half = Some(5_000.0);
        assert_eq!(
            (0..150)
                .filter(|_| share.take(Some(whole), half, now))
                .count(),
            50
        );
        assert!(!share.take(Some(whole), half, now + Duration::from_millis(10)));
        assert!(share.take(Some(whole), half, now + Duration::from_millis(20)));
    }
}
