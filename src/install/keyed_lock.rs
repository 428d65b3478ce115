//! One at a time per key, across installs: two installs that share a kernel would otherwise write
//! the same `<sha256>.part` (and one would find it promoted away under it), or bundle and register
//! the same kernel twice. The second waits, then finds the work done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct KeyedLocks {
    held: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while the work on one key runs; the entry goes when nobody holds or awaits it.
pub struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut held = self.held.lock().expect("keyed locks");
        held.entry(key.to_string()).or_default().clone()
    }

    /// The lock for `key` if nobody holds it now.
    pub fn try_lock(&self, key: &str) -> Option<KeyGuard<'_>> {
        let guard = self.entry(key).try_lock_owned().ok()?;
        Some(self.guard(key, guard))
    }

    /// Waits for the lock for `key`.
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let guard = self.entry(key).lock_owned().await;
        self.guard(key, guard)
    }

    fn guard(&self, key: &str, guard: OwnedMutexGuard<()>) -> KeyGuard<'_> {
        KeyGuard {
            locks: self,
            key: key.to_string(),
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.lock().expect("keyed locks").len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut held = self.locks.held.lock().expect("keyed locks");
        if held
            .get(&self.key)
            .is_some_and(|entry| Arc::strong_count(entry) == 1)
        {
            held.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_and_entries_do_not_pile_up() {
        let locks = KeyedLocks::default();
        let first = locks.lock("kernel").await;
        assert!(locks.try_lock("kernel").is_none());
        assert!(locks.try_lock("ramdisk").is_some());
        drop(first);
        let again = locks.try_lock("kernel");
        assert!(again.is_some());
        drop(again);
        assert_eq!(locks.len(), 0);
    }
}
