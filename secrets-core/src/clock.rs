//! Time, injected: every deadline in the engine and the built-in sources goes through a [`Clock`],
//! so TTL, renewal and backoff logic is tested with a [`ManualClock`] instead of sleeping.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

/// A future that completes at a deadline of its clock.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of monotonic time, wall time and sleeps.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Monotonic now: deadlines are computed from it.
    fn now(&self) -> Instant;
    /// Wall-clock now: backends state expiries and rotation dates in it.
    fn wall(&self) -> SystemTime;
    /// Complete once [`now`](Self::now) has reached `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Sleep;

    /// A cheaper `now` that may lag by a few milliseconds: the cache's freshness test, whose
    /// deadlines are seconds apart, reads this. Defaults to [`now`](Self::now).
    fn now_coarse(&self) -> Instant {
        self.now()
    }

    /// Convert a wall-clock instant to a monotonic deadline (saturating at now).
    fn deadline_for(&self, at: SystemTime) -> Instant {
        let now = self.now();
        match at.duration_since(self.wall()) {
            Ok(ahead) => now + ahead,
            Err(_) => now,
        }
    }
}

/// The real clock, sleeping on tokio's timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads real time
    fn now(&self) -> Instant {
        Instant::now()
    }

    #[allow(clippy::disallowed_methods)]
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    /// Linux's `CLOCK_MONOTONIC_COARSE` (the last timer tick, a few ms behind; several times
    /// cheaper than `CLOCK_MONOTONIC` on virtual machines), mapped onto `Instant`.
    #[cfg(target_os = "linux")]
    fn now_coarse(&self) -> Instant {
        use rustix::time::{ClockId, clock_gettime};
        static ANCHOR: std::sync::OnceLock<(Instant, Duration)> = std::sync::OnceLock::new();
        let read = || {
            let t = clock_gettime(ClockId::MonotonicCoarse);
            Duration::new(t.tv_sec.unsigned_abs(), t.tv_nsec.unsigned_abs() as u32)
        };
        // Taken at once: the coarse clock may lag the anchor by a tick, which only makes a
        // freshness test a tick more generous.
        let (base, base_coarse) = *ANCHOR.get_or_init(|| (self.now(), read()));
        base + read().saturating_sub(base_coarse)
    }
}

/// A clock that moves only when told to. Cloning shares the clock.
///
/// [`advance`](ManualClock::advance) steps through every sleeper's deadline in order and lets the
/// runtime run between steps, so a task that sleeps again while time advances is woken at its
/// new deadline too, exactly as it would be in real time. Use it on a current-thread runtime.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<ManualState>>,
    base: Instant,
    base_wall: SystemTime,
}

struct ManualState {
    elapsed: Duration,
    /// Added to the wall clock only (a step of the system clock).
    wall_jump: Duration,
    /// (deadline, the sleep's id, its waker)
    sleepers: Vec<(Instant, u64, Waker)>,
    next_id: u64,
}

impl ManualClock {
    /// A clock at an arbitrary fixed wall time (2027-01-15T08:00:00Z), so tests are repeatable.
    #[allow(clippy::disallowed_methods)] // only an anchor: the manual clock never reads real time again
    pub fn new() -> Self {
        ManualClock {
            inner: Arc::new(Mutex::new(ManualState {
                elapsed: Duration::ZERO,
                wall_jump: Duration::ZERO,
                sleepers: Vec::new(),
                next_id: 0,
            })),
            base: Instant::now(),
            base_wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn state(&self) -> MutexGuard<'_, ManualState> {
        // A panic while holding this lock cannot leave the state inconsistent (plain fields).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time elapsed since the clock was made.
    pub fn elapsed(&self) -> Duration {
        self.state().elapsed
    }

    /// Move time forward by `by`, waking sleepers in deadline order and letting woken tasks run
    /// (and sleep again) before moving on.
    pub async fn advance(&self, by: Duration) {
        // Tasks spawned just before (a handle's refresh task, say) register their sleeps first.
        settle().await;
        let target = self.state().elapsed + by;
        loop {
            let next = {
                let st = self.state();
                st.sleepers
                    .iter()
                    .map(|(d, _, _)| d.duration_since(self.base))
                    .filter(|d| *d <= target)
                    .min()
            };
            let Some(step) = next else { break };
            self.set_elapsed(step.max(self.elapsed()));
            settle().await;
        }
        self.set_elapsed(target);
        settle().await;
    }

    fn set_elapsed(&self, to: Duration) {
        let woken: Vec<Waker> = {
            let mut st = self.state();
            st.elapsed = to;
            let now = self.base + to;
            let (due, rest) = std::mem::take(&mut st.sleepers)
                .into_iter()
                .partition::<Vec<_>, _>(|(d, _, _)| *d <= now);
            st.sleepers = rest;
            due.into_iter().map(|(_, _, w)| w).collect()
        };
        woken.into_iter().for_each(Waker::wake);
    }

    /// Step the wall clock forward by `by` without moving monotonic time (an NTP step, a
    /// suspended VM resumed): deadlines already computed stay where they are.
    pub fn jump_wall(&self, by: Duration) {
        self.state().wall_jump += by;
    }

    /// Number of tasks currently sleeping on this clock.
    pub fn sleepers(&self) -> usize {
        self.state().sleepers.len()
    }

    /// How long each current sleeper has left, shortest first. A test that waits for one
    /// particular sleep (a retry wait beside a stream's idle limit, say) looks for its length
    /// here rather than counting sleepers, which other tasks add and drop concurrently.
    pub fn sleeping_for(&self) -> Vec<Duration> {
        let st = self.state();
        let now = self.base + st.elapsed;
        let mut left: Vec<Duration> = st
            .sleepers
            .iter()
            .map(|(d, _, _)| d.saturating_duration_since(now))
            .collect();
        left.sort();
        left
    }
}

/// Let every ready task on the current runtime run until it waits again.
pub async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.state().elapsed
    }

    fn wall(&self) -> SystemTime {
        let st = self.state();
        self.base_wall + st.elapsed + st.wall_jump
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        let id = {
            let mut st = self.state();
            st.next_id += 1;
            st.next_id
        };
        Box::pin(ManualSleep {
            clock: self.clone(),
            deadline,
            id,
        })
    }
}

struct ManualSleep {
    clock: ManualClock,
    deadline: Instant,
    id: u64,
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        // A sleep given up (a task aborted, a select that went the other way) is no sleeper.
        self.clock
            .state()
            .sleepers
            .retain(|(_, id, _)| *id != self.id);
    }
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.clock.state();
        if self.clock.base + st.elapsed >= self.deadline {
            return Poll::Ready(());
        }
        let (deadline, id) = (self.deadline, self.id);
        // Replace an earlier registration of this sleep rather than piling up wakers.
        st.sleepers.retain(|(_, i, _)| *i != id);
        st.sleepers.push((deadline, id, cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn advance_wakes_in_order_and_follows_resleeps() {
        let clock = ManualClock::new();
        let start = clock.now();
        let c = clock.clone();
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let t = ticks.clone();
        tokio::spawn(async move {
            for i in 1..=3u64 {
                c.sleep_until(start + Duration::from_secs(10 * i)).await;
                t.lock().unwrap().push(c.elapsed());
            }
        });
        settle().await;
        clock.advance(Duration::from_secs(25)).await;
        assert_eq!(
            *ticks.lock().unwrap(),
            vec![Duration::from_secs(10), Duration::from_secs(20)]
        );
        clock.advance(Duration::from_secs(5)).await;
        assert_eq!(ticks.lock().unwrap().len(), 3);
        assert_eq!(clock.sleepers(), 0);
    }

    #[tokio::test]
    async fn a_sleep_given_up_is_no_sleeper() {
        let clock = ManualClock::new();
        let c = clock.clone();
        let task = tokio::spawn(async move {
            c.sleep_until(c.now() + Duration::from_secs(10)).await;
        });
        settle().await;
        assert_eq!(clock.sleepers(), 1);
        task.abort();
        let _ = task.await;
        assert_eq!(clock.sleepers(), 0);
    }

    #[test]
    fn wall_and_monotonic_move_together() {
        let clock = ManualClock::new();
        let w = clock.wall();
        let at = w + Duration::from_secs(30);
        assert_eq!(
            clock.deadline_for(at),
            clock.now() + Duration::from_secs(30)
        );
        assert_eq!(clock.deadline_for(w - Duration::from_secs(5)), clock.now());
    }
}
