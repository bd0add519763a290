//! What every entry of one client shares: the clock, the settings, the global event feed and the
//! random numbers for jitter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::reference::SecretRef;

use super::events::RotationEvent;

/// Settings of a client (set through [`SecretsBuilder`](super::SecretsBuilder)).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) refresh_interval: Duration,
    pub(crate) refresh_overrides: HashMap<SecretRef, Duration>,
    pub(crate) jitter: f64,
    pub(crate) negative_ttl: Duration,
    pub(crate) max_staleness: Option<Duration>,
    pub(crate) backoff: Backoff,
    pub(crate) capacity: u64,
    pub(crate) revoke_on_shutdown: bool,
    pub(crate) revoke_replaced_after: Option<Duration>,
    pub(crate) renew_increment: Option<Duration>,
    pub(crate) event_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            refresh_interval: Duration::from_secs(300),
            refresh_overrides: HashMap::new(),
            jitter: 0.2,
            negative_ttl: Duration::from_secs(5),
            max_staleness: None,
            backoff: Backoff::default(),
            capacity: 10_000,
            revoke_on_shutdown: false,
            revoke_replaced_after: None,
            renew_increment: None,
            event_capacity: 256,
        }
    }
}

impl Config {
    /// The routine check interval for `base` (a reference without field).
    pub(crate) fn interval_for(&self, base: &SecretRef) -> Duration {
        self.refresh_overrides
            .get(base)
            .copied()
            .unwrap_or(self.refresh_interval)
    }
}

pub(crate) struct Ctx {
    pub(crate) clock: Arc<dyn Clock>,
    /// A fixed point of the clock, to keep deadlines as plain numbers.
    pub(crate) epoch: std::time::Instant,
    pub(crate) config: Config,
    pub(crate) events: broadcast::Sender<RotationEvent>,
    rng: Mutex<fastrand::Rng>,
}

impl Ctx {
    pub(crate) fn new(clock: Arc<dyn Clock>, config: Config, seed: Option<u64>) -> Self {
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let rng = match seed {
            Some(s) => fastrand::Rng::with_seed(s),
            None => fastrand::Rng::new(),
        };
        Ctx {
            epoch: clock.now(),
            clock,
            config,
            events,
            rng: Mutex::new(rng),
        }
    }

    /// A uniform random number in `[0, 1)` for jitter.
    pub(crate) fn unit(&self) -> f64 {
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).f64()
    }
}
