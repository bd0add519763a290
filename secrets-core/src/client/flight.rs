//! Single-flight: concurrent loads of one key share one future, and so one backend call and one
//! result, success or error.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// Each flight with an id, so a finished flight never removes a newer one for the same key.
type Pending<K, V> = Mutex<(u64, HashMap<K, (u64, Shared<BoxFuture<'static, V>>)>)>;

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
    /// completes or panics, or when every waiter has given up (then `load` is dropped).
    pub(crate) fn join(
        &self,
        key: K,
        load: impl Future<Output = V> + Send + 'static,
    ) -> Flight<K, V> {
        let mut guard = lock(&self.pending);
        let (next_id, pending) = &mut *guard;
        let shared = match pending.get(&key) {
            Some((_, flight)) => flight.clone(),
            None => {
                *next_id += 1;
                let id = *next_id;
                // Weak: the map holds the flight, which must not keep the map alive.
                let landed = Landed {
                    map: Arc::downgrade(&self.pending),
                    key: Some(key.clone()),
                    id,
                };
                let flight = async move {
                    // Dropped when the load completes, panics or is cancelled.
                    let _landed = landed;
                    load.await
                }
                .boxed()
                .shared();
                pending.insert(key.clone(), (id, flight.clone()));
                flight
            }
        };
        Flight {
            key,
            shared: Some(shared),
            map: Arc::downgrade(&self.pending),
        }
    }
}

/// Removes a finished flight from the map (only if it is still the one there).
struct Landed<K: Hash + Eq, V> {
    map: Weak<Pending<K, V>>,
    key: Option<K>,
    id: u64,
}

impl<K: Hash + Eq, V> Drop for Landed<K, V> {
    fn drop(&mut self) {
        if let (Some(map), Some(key)) = (self.map.upgrade(), self.key.take()) {
            let mut guard = lock(&map);
            let ours = guard.1.get(&key).is_some_and(|(id, _)| *id == self.id);
            // Dropped outside the lock: dropping a flight may run this very code again.
            let removed = if ours { guard.1.remove(&key) } else { None };
            drop(guard);
            drop(removed);
        }
    }
}

/// One waiter of a flight. Dropping the last waiter of an unfinished flight cancels it.
pub(crate) struct Flight<K: Hash + Eq, V: Clone> {
    key: K,
    shared: Option<Shared<BoxFuture<'static, V>>>,
    map: Weak<Pending<K, V>>,
}

impl<K: Hash + Eq + Unpin, V: Clone> Future for Flight<K, V> {
    type Output = V;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<V> {
        match self.shared.as_mut() {
            Some(shared) => shared.poll_unpin(cx),
            None => Poll::Pending,
        }
    }
}

impl<K: Hash + Eq, V: Clone> Drop for Flight<K, V> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let Some(map) = self.map.upgrade() else {
            return;
        };
        let mut guard = lock(&map);
        let ours = guard
            .1
            .get(&self.key)
            .is_some_and(|(_, f)| f.ptr_eq(&shared));
        drop(shared);
        let last = guard.1.get(&self.key).and_then(|(_, f)| f.strong_count()) == Some(1);
        // Nobody waits any more: cancel the load (dropped outside the lock, as it may re-enter).
        let removed = if ours && last {
            guard.1.remove(&self.key)
        } else {
            None
        };
        drop(guard);
        drop(removed);
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
