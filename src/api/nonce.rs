//! Remembers each accepted `Nonce` until its `Expires`, so a captured request cannot be replayed.
//!
//! Only requests whose signature already verified reach this book, so only holders of the secret
//! can fill it; the cap is still there so that memory stays bounded whatever happens.

use std::collections::HashMap;
use std::sync::Mutex;

/// More live nonces than the UI could ever produce: a Store tab polls every 5 s, signatures live 30 s.
pub const DEFAULT_CAPACITY: usize = 100_000;

pub struct NonceBook {
    seen: Mutex<HashMap<String, i64>>,
    capacity: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum NonceVerdict {
    Fresh,
    Replayed,
    /// The book is full of live nonces: refuse rather than forget one that might be replayed.
    Full,
}

impl NonceBook {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Records `nonce` (valid until `expires`, Unix seconds) unless it is still remembered.
    pub fn check_and_remember(&self, nonce: &str, expires: i64, now: i64) -> NonceVerdict {
        let mut seen = self.seen.lock().expect("nonce book lock");
        if seen.get(nonce).is_some_and(|&until| until >= now) {
            return NonceVerdict::Replayed;
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, until| *until >= now);
            if seen.len() >= self.capacity {
                return NonceVerdict::Full;
            }
        }
        seen.insert(nonce.to_string(), expires);
        NonceVerdict::Fresh
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
        assert_eq!(book.check_and_remember("x", 200, 111), NonceVerdict::Fresh);
        assert_eq!(book.seen.lock().unwrap().len(), 1);
    }
}
