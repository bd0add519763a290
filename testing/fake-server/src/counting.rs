//! A crypto provider that counts its uses, to prove which provider a client was built on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::crypto::{CryptoProvider, GetRandomFailed, SecureRandom};

/// rustls' ring provider, except that it counts the random draws rustls asks it for. Every TLS
/// handshake a client makes draws its client random from its own provider, so a count that
/// moved across a request proves the client's configuration was built on this provider (and
/// not on the process default, or on a provider of the library's choosing).
pub fn counting_provider() -> (Arc<CryptoProvider>, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let ring = rustls::crypto::ring::default_provider();
    // `secure_random` is `&'static`: one small leak per provider, in tests only.
    let random: &'static CountingRandom = Box::leak(Box::new(CountingRandom {
        inner: ring.secure_random,
        count: count.clone(),
    }));
    let provider = CryptoProvider {
        secure_random: random,
        ..ring
    };
    (Arc::new(provider), count)
}

#[derive(Debug)]
struct CountingRandom {
    inner: &'static dyn SecureRandom,
    count: Arc<AtomicUsize>,
}

impl SecureRandom for CountingRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.inner.fill(buf)
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}
