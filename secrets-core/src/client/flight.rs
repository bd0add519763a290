//! Single-flight: concurrent loads of one key share one future, and so one backend call and one
//! result, success or error.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

type Pending<K, V> = Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>;

pub(crate) struct Flights<K, V> {
    pending: Arc<Pending<K, V>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            pending: Arc::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Join the flight for `key`, or start it with `load` (which is dropped unpolled when a flight
    /// is already under way). The flight ends, and a later call starts a new one, when `load`
    /// completes.
    pub(crate) fn join(
        &self,
        key: K,
        load: impl Future<Output = V> + Send + 'static,
    ) -> Shared<BoxFuture<'static, V>> {
        let mut pending = lock(&self.pending);
        if let Some(flight) = pending.get(&key) {
            return flight.clone();
        }
        // Weak: the map holds the flight, which must not keep the map alive.
        let map = Arc::downgrade(&self.pending);
        let done = key.clone();
        let flight = async move {
            let value = load.await;
            if let Some(map) = map.upgrade() {
                lock(&map).remove(&done);
            }
            value
        }
        .boxed()
        .shared();
        pending.insert(key, flight.clone());
        flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_joins_share_one_load_and_its_result() {
        let flights: Flights<&'static str, Result<u32, String>> = Flights::default();
        let loads = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let counted = |loads: Arc<AtomicUsize>| async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Err::<u32, String>("down".into())
        };
        let gate = async move {
            let _ = rx.await;
        };
        let first = flights.join("k", {
            let loads = loads.clone();
            async move {
                gate.await;
                counted(loads).await
            }
        });
        let second = flights.join("k", counted(loads.clone()));
        let _ = tx.send(());
        let (a, b) = tokio::join!(first, second);
        assert_eq!((a, b), (Err("down".into()), Err("down".into())));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // Done: the next join loads again.
        let third = flights.join("k", counted(loads.clone())).await;
        assert!(third.is_err());
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }
}
