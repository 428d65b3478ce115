//! Remembers each accepted `Nonce` until its `Expires`, so a captured request cannot be replayed.
//!
//! Only requests whose signature already verified reach this book, so only holders of the secret
//! can fill it; the cap is still there so that memory stays bounded whatever happens. When the
//! book is full of live nonces it refuses new requests ([`NonceVerdict::Full`], a 503) rather than
//! forget a live nonce early, which would let that request be replayed.
//!
//! Nonces are kept as a 64-bit keyed hash, not as text: 16 bytes an entry whatever the client
//! sends, so the cap bounds memory in bytes too (about 18 MiB at [`NONCE_CAPACITY`](crate::limits::NONCE_CAPACITY)). The hash
//! is keyed per process, so nobody can aim for a collision; a chance one (about 1 in 40 million
//! with the book full) refuses one genuine request as a replay, and lets none through.
//!
//! The daemon's book is also on disk ([`NonceStore`], `db/nonces.rs`): each accepted nonce is
//! committed before its request runs, and a start reads back the live ones, so a request seen
//! just before a restart is a replay just after it. (Refusing every request signed before the
//! start instead would refuse a servlet whose clock runs ahead, which `Expires` may be by up to
//! 15 minutes, for up to 15 minutes after each restart.) A nonce that cannot be written down (a
//! full disk) is still remembered in memory, with a warning: the UI keeps working while the
//! operator frees space, and only a restart within its 15 minutes could replay it.

use crate::db::DbError;
use crate::db::nonces::NonceStore;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

pub struct NonceBook {
    inner: Mutex<Book>,
    hasher: Hasher,
    capacity: usize,
}

/// How a nonce becomes its key: the process's random hash for a book in memory only, the
/// store's keyed hash (the same after a restart) for one on disk.
enum Hasher {
    Memory(RandomState),
    Disk(NonceStore),
}

struct Book {
    /// Nonce hash -> the `Expires` it came with (Unix seconds).
    live: HashMap<u64, i64>,
    /// When expired nonces were last swept out: at most one O(n) sweep a second while full.
    last_sweep: i64,
}

#[derive(Debug)]
pub enum NonceVerdict {
    Fresh,
    Replayed,
    /// The book is full of live nonces: refuse rather than forget one that might be replayed.
    Full,
}

impl PartialEq for NonceVerdict {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl NonceBook {
    /// A book in memory only (tests, fuzzing).
    pub fn new(capacity: usize) -> Self {
        Self::with(capacity, Hasher::Memory(RandomState::new()), Vec::new())
    }

    /// The daemon's book: `store`'s live nonces at `now` read back, each new one written to it.
    pub fn on_disk(capacity: usize, store: NonceStore, now: i64) -> Result<Self, DbError> {
        let live = store.live(now)?;
        Ok(Self::with(capacity, Hasher::Disk(store), live))
    }

    fn with(capacity: usize, hasher: Hasher, live: Vec<(u64, i64)>) -> Self {
        Self {
            inner: Mutex::new(Book {
                live: live.into_iter().collect(),
                last_sweep: i64::MIN,
            }),
            hasher,
            capacity,
        }
    }

    /// Records `nonce` (valid until `expires`, Unix seconds) unless it is still remembered.
    pub fn check_and_remember(&self, nonce: &str, expires: i64, now: i64) -> NonceVerdict {
        let key = match &self.hasher {
            Hasher::Memory(state) => state.hash_one(nonce),
            Hasher::Disk(store) => store.hash(nonce),
        };
        let mut book = self.inner.lock().expect("nonce book lock");
        if book.live.get(&key).is_some_and(|&until| until >= now) {
            return NonceVerdict::Replayed;
        }
        if book.live.len() >= self.capacity && !book.live.contains_key(&key) {
            if book.last_sweep != now {
                book.last_sweep = now;
                book.live.retain(|_, until| *until >= now);
            }
            if book.live.len() >= self.capacity {
                return NonceVerdict::Full;
            }
        }
        if let Hasher::Disk(store) = &self.hasher {
            // Under the book's lock, so two requests with one nonce cannot both pass.
            if let Err(error) = store.remember(key, expires) {
                tracing::warn!(
                    "nonce book: not written down ({error}); remembered in memory only, so a restart within its expiry could accept it again"
                );
            }
            if book.last_sweep != now {
                book.last_sweep = now;
                book.live.retain(|_, until| *until >= now);
                if let Err(error) = store.forget_expired(now) {
                    tracing::warn!("nonce book: {error}");
                }
            }
        }
        book.live.insert(key, expires);
        NonceVerdict::Fresh
    }

    /// Nonces remembered now (live ones, and expired ones not yet swept), for `/metrics`.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("nonce book lock").live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_refused_until_expiry() {
        let book = NonceBook::new(10);
        assert_eq!(
            book.check_and_remember("-42", 130, 100),
            NonceVerdict::Fresh
        );
        assert_eq!(
            book.check_and_remember("-42", 130, 129),
            NonceVerdict::Replayed
        );
        assert_eq!(
            book.check_and_remember("-42", 130, 130),
            NonceVerdict::Replayed
        );
        assert_eq!(
            book.check_and_remember("-42", 200, 131),
            NonceVerdict::Fresh
        );
    }

    #[test]
    fn stays_bounded_and_forgets_only_expired() {
        let book = NonceBook::new(3);
        for n in 0..3 {
            assert_eq!(
                book.check_and_remember(&n.to_string(), 110, 100),
                NonceVerdict::Fresh
            );
        }
        assert_eq!(book.check_and_remember("x", 110, 100), NonceVerdict::Full);
        // Full is not forgetful: the live ones are still refused as replays.
        assert_eq!(
            book.check_and_remember("1", 110, 105),
            NonceVerdict::Replayed
        );
        assert_eq!(book.check_and_remember("x", 200, 111), NonceVerdict::Fresh);
        assert_eq!(book.len(), 1);
    }

    /// A flood of distinct fresh nonces: the book never holds more than its cap, refuses the
    /// overflow as `Full` (never by forgetting), and every nonce it accepted is still refused as a
    /// replay while it lives. Once they expire, room comes back.
    #[test]
    fn a_flood_keeps_the_book_at_its_cap_and_replays_refused() {
        const CAP: usize = 10_000;
        let book = NonceBook::new(CAP);
        let now = 1_000;
        let (mut fresh, mut full) = (0, 0);
        for n in 0..(3 * CAP) {
            match book.check_and_remember(&format!("flood-{n}"), now + 30, now) {
                NonceVerdict::Fresh => fresh += 1,
                NonceVerdict::Full => full += 1,
                other => panic!("flood-{n}: {other:?}"),
            }
            assert!(book.len() <= CAP);
        }
        assert_eq!((fresh, full), (CAP, 2 * CAP));
        assert_eq!(book.len(), CAP);
        for n in (0..CAP).step_by(97) {
            assert_eq!(
                book.check_and_remember(&format!("flood-{n}"), now + 30, now + 29),
                NonceVerdict::Replayed,
                "flood-{n} replayed inside its window"
            );
        }
        // All expired: the next request sweeps them out and is accepted.
        assert_eq!(
            book.check_and_remember("after", now + 61, now + 31),
            NonceVerdict::Fresh
        );
        assert_eq!(book.len(), 1);
    }

    /// The book on disk: what one process accepted, the next (same file) refuses until it
    /// expires.
    #[test]
    fn a_book_on_disk_remembers_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces.sqlite");
        let open = |now| NonceBook::on_disk(10, NonceStore::open(&path, now).unwrap(), now);
        let book = open(100).unwrap();
        assert_eq!(book.check_and_remember("n", 130, 100), NonceVerdict::Fresh);
        drop(book);
        let book = open(110).unwrap();
        assert_eq!(book.len(), 1);
        assert_eq!(
            book.check_and_remember("n", 130, 110),
            NonceVerdict::Replayed
        );
        assert_eq!(book.check_and_remember("m", 130, 110), NonceVerdict::Fresh);
        drop(book);
        let book = open(131).unwrap();
        assert!(book.is_empty(), "expired nonces are not read back");
        assert_eq!(book.check_and_remember("n", 160, 131), NonceVerdict::Fresh);
    }

    #[test]
    fn default_capacity_fits_one_table_without_doubling() {
        // Grown from empty as the book grows: a full book sits in 2^20 buckets, not 2^21.
        let mut map: HashMap<u64, i64> = HashMap::new();
        for key in 0..crate::limits::NONCE_CAPACITY as u64 {
            map.insert(key, 0);
        }
        assert!(map.capacity() < 1 << 20, "{}", map.capacity());
    }
}
