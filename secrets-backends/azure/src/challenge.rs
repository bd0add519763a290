//! One authentication challenge per vault, however many reads start cold together.
//!
//! The SDK learns a vault's token scope from the 401 challenge its first unauthenticated request
//! gets, and keeps it in its client; until then every request goes out without a token. Twenty
//! reads started together on a new client would cost twenty challenges (measured before this
//! existed). So the first read of a vault leads a *discovery*: the others wait for it, then send
//! with the scope the SDK learnt. A discovery that fails (the challenge answered 503, a proxy's
//! HTML page, no answer) gives its error to the reads that waited for it and is not remembered:
//! the next read leads a new one. A hung discovery ends at the request timeout.
//!
//! The leading read costs two requests (the challenge, then the read with a token): it takes a
//! second place in the source's request budget when it starts
//! ([`needed_request`](keyrack_core::budget::needed_request)), ahead of the reads that wait for
//! it, and the read with the token waits for that place (when the SDK asks for the token).
//!
//! Whether the scope is known is seen from the credential: the SDK asks it for a token only
//! with the scope it took from a challenge, so [`ScopeWitness`] marks the vault's discovery done
//! at the first token request.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use keyrack_core::{Error, ErrorKind, Result, async_trait};
use tokio::sync::watch;

/// What waiting reads learn from a discovery: `Ok` (go ahead) or its error.
type Outcome = Option<std::result::Result<(), Error>>;

/// The budget place of the read that follows a challenge, taken when the discovery starts and
/// waited for when the SDK asks for the token.
type NeededPlace = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The scope discovery of one vault's SDK client.
#[derive(Default)]
pub(crate) struct ScopeDiscovery {
    known: AtomicBool,
    /// The leading read's second place, until the SDK asks for the token it sends with.
    needed: Mutex<Option<NeededPlace>>,
    /// The discovery under way, if any: its number and where its outcome is announced.
    flight: Mutex<Option<(u64, watch::Receiver<Outcome>)>>,
    attempts: AtomicU64,
}

impl fmt::Debug for ScopeDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeDiscovery")
            .field("known", &self.is_known())
            .finish_non_exhaustive()
    }
}

/// A read's part in a discovery.
enum Role {
    /// Send the first request; announce the outcome with the guard.
    Lead(Leader),
    /// Wait for the outcome of the discovery under way.
    Wait(watch::Receiver<Outcome>),
}

/// Held by the read that leads a discovery. Dropped without [`finish`](Leader::finish) (the read
/// was cancelled), it clears the discovery so that a waiting read leads the next one.
struct Leader {
    discovery: Arc<ScopeDiscovery>,
    attempt: u64,
    tx: watch::Sender<Outcome>,
}

impl Leader {
    fn finish(self, outcome: std::result::Result<(), Error>) {
        self.tx.send_replace(Some(outcome));
        // Drop clears the flight.
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut flight = self
            .discovery
            .flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if flight.as_ref().is_some_and(|(a, _)| *a == self.attempt) {
            *flight = None;
        }
    }
}

impl ScopeDiscovery {
    pub(crate) fn is_known(&self) -> bool {
        self.known.load(Ordering::Acquire)
    }

    fn mark_known(&self) {
        self.known.store(true, Ordering::Release);
    }

    fn join_or_lead(self: &Arc<Self>) -> Role {
        let mut flight = self.flight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, rx)) = flight.as_ref() {
            return Role::Wait(rx.clone());
        }
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        *flight = Some((attempt, rx));
        Role::Lead(Leader {
            discovery: self.clone(),
            attempt,
            tx,
        })
    }

    /// Run `read` once the vault's scope is known: at once if it is; else lead a discovery with
    /// it (bounded by `timeout`), or wait for the one under way and go on if it found the scope
    /// (or the vault sent no challenge), with its error if not.
    pub(crate) async fn read<T, F, Fut>(self: &Arc<Self>, timeout: Duration, read: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        loop {
            if self.is_known() {
                return read().await;
            }
            match self.join_or_lead() {
                Role::Lead(leader) => {
                    // The read is sent twice, without a token for the challenge and then with
                    // one: the second request's place is taken now, before the reads waiting
                    // for this one take theirs, and waited for when the SDK asks for the token.
                    *self.needed.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(Box::pin(keyrack_core::budget::needed_request()));
                    let result = match tokio::time::timeout(timeout, read()).await {
                        Ok(result) => result,
                        Err(_) => Err(Error::new(
                            ErrorKind::Unavailable,
                            format!(
                                "Key Vault did not complete the first (authentication challenge) \
                                 request within {timeout:?}"
                            ),
                        )),
                    };
                    let outcome = match &result {
                        Ok(_) => {
                            // Answered without a challenge (a vault that needs no token, a
                            // fake): nothing to wait for next time either.
                            self.mark_known();
                            Ok(())
                        }
                        Err(_) if self.is_known() => Ok(()),
                        Err(e) => Err(e.clone()),
                    };
                    // Not asked for (no challenge, or it failed): the place is given back.
                    drop(
                        self.needed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .take(),
                    );
                    leader.finish(outcome);
                    return result;
                }
                Role::Wait(mut rx) => {
                    let outcome = rx.wait_for(Option::is_some).await.map(|o| o.clone());
                    match outcome {
                        Ok(Some(Err(e))) => return Err(e),
                        Ok(_) => return read().await,
                        // The leading read was cancelled before it knew: lead or join anew.
                        Err(_) => continue,
                    }
                }
            }
        }
    }
}

/// The credential a vault's SDK client asks for tokens: marks the vault's scope as discovered
/// at the first request (the SDK asks only once it has the scope), then asks the source's
/// credential.
pub(crate) struct ScopeWitness {
    pub(crate) inner: Arc<dyn TokenCredential>,
    pub(crate) discovery: Arc<ScopeDiscovery>,
}

impl fmt::Debug for ScopeWitness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The inner credential prints what it may (no secret).
        self.inner.fmt(f)
    }
}

#[async_trait]
impl TokenCredential for ScopeWitness {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.discovery.mark_known();
        // The read the SDK sends with this token after a challenge is the call's second
        // request: it goes when its place in the budget comes.
        let needed = self
            .discovery
            .needed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(place) = needed {
            place.await;
        }
        self.inner.get_token(scopes, options).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Twenty reads at once lead one discovery; a failure goes to those that waited for it and
    /// is not kept; a cancelled leader hands over.
    #[tokio::test]
    async fn one_discovery_for_concurrent_reads_and_failures_are_not_kept() {
        let d = Arc::new(ScopeDiscovery::default());
        let sent = Arc::new(AtomicUsize::new(0));
        let (open, gate) = watch::channel(false);
        let read = |fail: bool| {
            let (d, sent, gate) = (d.clone(), sent.clone(), gate.clone());
            move || {
                let (d, sent, mut gate) = (d.clone(), sent.clone(), gate.clone());
                async move {
                    let first = sent.fetch_add(1, Ordering::SeqCst) == 0;
                    if first {
                        gate.wait_for(|o| *o).await.unwrap();
                        if fail {
                            return Err(Error::new(ErrorKind::Unavailable, "HTTP 503"));
                        }
                        d.mark_known();
                    }
                    Ok(())
                }
            }
        };
        // A failing discovery: every read that waited for it fails with its error, once.
        let reads: Vec<_> = (0..20)
            .map(|_| {
                let (d, r) = (d.clone(), read(true));
                tokio::spawn(async move { d.read(Duration::from_secs(5), r).await })
            })
            .collect();
        tokio::task::yield_now().await;
        while sent.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        open.send_replace(true);
        for r in reads {
            let e = r.await.unwrap().unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::Unavailable);
        }
        assert_eq!(
            sent.load(Ordering::SeqCst),
            1,
            "one request for twenty reads"
        );
        assert!(!d.is_known());
        // Not kept: the next read leads a new discovery, which succeeds.
        open.send_replace(false);
        sent.store(0, Ordering::SeqCst);
        let reads: Vec<_> = (0..20)
            .map(|_| {
                let (d, r) = (d.clone(), read(false));
                tokio::spawn(async move { d.read(Duration::from_secs(5), r).await })
            })
            .collect();
        while sent.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        open.send_replace(true);
        for r in reads {
            r.await.unwrap().unwrap();
        }
        assert!(d.is_known());
        assert_eq!(
            sent.load(Ordering::SeqCst),
            20,
            "the others read after the discovery"
        );
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over() {
        let d = Arc::new(ScopeDiscovery::default());
        let hung = {
            let d = d.clone();
            tokio::spawn(async move {
                d.read(Duration::from_secs(3600), || {
                    std::future::pending::<Result<()>>()
                })
                .await
            })
        };
        while d.flight.lock().unwrap().is_none() {
            tokio::task::yield_now().await;
        }
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move {
                d.read(Duration::from_secs(5), || {
                    let d = d.clone();
                    async move {
                        d.mark_known();
                        Ok(())
                    }
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        hung.abort();
        waiter.await.unwrap().unwrap();
        assert!(d.is_known());
    }
}
