//! The read side of the cache: canonical reference text → view, in a few read-mostly shards.
//!
//! A hit is a shard read lock, one hash of the text and one map probe; no parse, no allocation,
//! no async lock. moka (in `mod.rs`) owns admission and eviction and is told of a sample of the
//! hits; its eviction listener removes the evicted view from here.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::reference::SecretRef;

use super::view::View;

const SHARDS: usize = 16;

/// A reference keyed by its canonical text, so a `&str` finds it without parsing; it shares the
/// reference's allocation rather than copying the text.
#[derive(Clone)]
pub(crate) struct TextKey(pub(crate) SecretRef);

impl Borrow<str> for TextKey {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for TextKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for TextKey {}

impl Hash for TextKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

/// A fast multiply-xor hash over 8-byte words (FxHash's scheme). Only references that loaded
/// successfully are inserted, so callers cannot flood the map with colliding keys.
#[derive(Default)]
pub(crate) struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0 ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        let mut w = [0u8; 8];
        let rest = chunks.remainder();
        w[..rest.len()].copy_from_slice(rest);
        self.0 = (self.0 ^ u64::from_le_bytes(w) ^ (bytes.len() as u64)).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

type Shard = HashMap<TextKey, Arc<View>, BuildHasherDefault<WordHasher>>;

pub(crate) struct Front {
    shards: [RwLock<Shard>; SHARDS],
}

impl Default for Front {
    fn default() -> Self {
        Front {
            shards: std::array::from_fn(|_| RwLock::new(Shard::default())),
        }
    }
}

/// A cheap spread of the text over the shards (the map hashes it properly).
fn shard_of(key: &str) -> usize {
    let tail = &key.as_bytes()[key.len().saturating_sub(8)..];
    let mut h = key.len() as u64;
    for &b in tail {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (h as usize) % SHARDS
}

impl Front {
    pub(crate) fn read(&self, key: &str) -> RwLockReadGuard<'_, Shard> {
        self.shards[shard_of(key)]
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<View>> {
        self.read(key).get(key).cloned()
    }

    pub(crate) fn insert(&self, key: &SecretRef, view: Arc<View>) {
        self.shards[shard_of(key.as_str())]
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(TextKey(key.clone()), view);
    }

    pub(crate) fn remove(&self, key: &str) {
        self.shards[shard_of(key)]
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Remove `key` if it still maps to `view` (a newer view may have replaced it).
    pub(crate) fn remove_if_same(&self, key: &str, view: &Arc<View>) {
        let mut shard = self.shards[shard_of(key)]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if shard.get(key).is_some_and(|v| Arc::ptr_eq(v, view)) {
            shard.remove(key);
        }
    }

    /// Number of references cached.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard.write().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}
