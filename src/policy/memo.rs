//! Bounded memos of inline entities decoded against one snapshot's schema.
//!
//! Services send the same users, accounts and pods again and again, and
//! Cedar's JSON entity parser dominates the cost of a check, so `authz`
//! remembers what it decoded: single entities keyed by their exact JSON text,
//! and whole assembled arrays keyed by the array's exact text. What is
//! remembered is exactly what Cedar's parser made of exactly that text under
//! exactly this schema, so a memo cannot change an answer; it lives on its
//! snapshot and dies with it. Each memo is bounded in (estimated) bytes, not
//! only in entries, so that large entity sets cannot grow it without bound.
//! This module only stores; decoding is `authz`'s.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use cedar_policy::{Entities, EntityUid};

/// Inline entities decoded and assembled with the schema's action entities.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The inline entities' UIDs, in the order they were sent.
    pub uids: Vec<EntityUid>,
    /// The inline entities and the schema's action entities, hierarchy
    /// computed.
    pub entities: Entities,
}

/// The memos of one snapshot.
#[derive(Debug)]
pub struct InlineMemo {
    /// Single decoded entities.
    pub entities: Memo<cedar_policy::Entity>,
    /// Whole decoded and assembled arrays.
    pub sets: Memo<Assembled>,
}

impl Default for InlineMemo {
    fn default() -> Self {
        Self {
            entities: Memo::with_budget(ENTITY_BYTES),
            sets: Memo::with_budget(SET_BYTES),
        }
    }
}

/// One memo bounded in bytes. A `std::sync::Mutex` is enough: it is held only
/// for a hash lookup or insert, never across an `.await`. When full it is
/// cleared rather than tracking recency: simple, and a refill costs only the
/// parses it saves.
#[derive(Debug)]
pub struct Memo<T> {
    inner: Mutex<Entries<T>>,
    /// Keyed per process, so that nobody can choose texts that collide.
    hasher: RandomState,
    /// The most bytes it holds (estimated).
    budget: usize,
}

#[derive(Debug)]
struct Entries<T> {
    map: HashMap<Box<str>, T>,
    /// The estimated bytes the entries hold.
    bytes: usize,
    /// Hashes of texts seen once and not (yet) remembered: a text is
    /// remembered on its second sighting, so that a stream of texts that
    /// never repeat (a new user in every request) costs no copies and does
    /// not push out the entries that do repeat.
    seen: HashSet<u64>,
}

impl<T> Memo<T> {
    /// An empty memo holding at most `budget` (estimated) bytes.
    pub fn with_budget(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Entries {
                map: HashMap::new(),
                bytes: 0,
                seen: HashSet::new(),
            }),
            hasher: RandomState::new(),
            budget,
        }
    }
}

/// The most bytes the memo of single entities holds (estimated). Only the
/// serving snapshot's memos are alive once in-flight requests end.
pub const ENTITY_BYTES: usize = 32 * 1024 * 1024;

/// The most bytes the memo of assembled sets holds (estimated). Every set
/// also holds the schema's action entities (a few KB for a typical schema),
/// so this is larger: 96 MB keeps the pods of 10,000 accounts, each sent
/// inline with a stored principal, remembered instead of refilled.
pub const SET_BYTES: usize = 96 * 1024 * 1024;

/// Texts longer than this are not remembered: they are rare, and one would
/// take a large share of the budget.
pub const MAX_KEY: usize = 8192;

/// How many first sightings are remembered before they are forgotten all
/// at once (8 bytes each).
const SEEN: usize = 65_536;

/// Decoded entities take several times the space of their JSON text (names,
/// hash maps, `Arc`s); this factor turns text length into an estimate.
const EXPANSION: usize = 8;

impl<T: Clone + Send + 'static> Memo<T> {
    fn lock(&self) -> MutexGuard<'_, Entries<T>> {
        // The map is only ever read or changed entry by entry; a panic while
        // holding the lock cannot leave a half-written entry.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value remembered for `text`.
    pub fn get(&self, text: &str) -> Option<T> {
        self.lock().map.get(text).cloned()
    }

    /// Remembers `value` for `text` if `text` was seen before (see
    /// `Entries::seen`); `extra` is the estimated size of what the value
    /// holds beyond the text's own expansion (shared action entities in an
    /// assembled set, for example).
    pub fn insert(&self, text: &str, value: &T, extra: usize) {
        if self.admits(text) {
            self.store(text, value, extra);
        }
    }

    /// Notes a sighting of `text` and says whether it is now to be
    /// remembered (its second sighting): a caller whose value costs extra
    /// work to build in the remembered form builds it only then, and hands
    /// it to [`Memo::store`].
    pub fn admits(&self, text: &str) -> bool {
        if text.len() > MAX_KEY {
            return false;
        }
        let hash = self.hasher.hash_one(text);
        let mut entries = self.lock();
        if entries.seen.insert(hash) {
            // First sighting. A collision with another text only admits
            // this one a sighting early.
            if entries.seen.len() > SEEN {
                entries.seen.clear();
            }
            return false;
        }
        entries.seen.remove(&hash);
        true
    }

    /// Remembers `value` for `text` now, whatever the sightings.
    pub fn store(&self, text: &str, value: &T, extra: usize) {
        if text.len() > MAX_KEY {
            return;
        }
        let cost = text.len() * (EXPANSION + 1) + extra + 64;
        let mut entries = self.lock();
        if entries.bytes + cost > self.budget {
            drop_elsewhere(std::mem::take(&mut entries.map));
            entries.bytes = 0;
        }
        if entries.map.insert(text.into(), value.clone()).is_none() {
            entries.bytes += cost;
        }
    }

    /// The estimated bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Drops `value` on a thread of its own: a full memo holds tens of thousands
/// of decoded entities, and freeing them one by one takes milliseconds that
/// the request which happened to fill the memo must not wait for. Inline if
/// no thread can be started.
pub fn drop_elsewhere<T: Send + 'static>(value: T) {
    // Should the thread not start, the closure, and `value` with it, is
    // dropped here instead.
    let _ = std::thread::Builder::new()
        .name("memo-drop".into())
        .spawn(move || drop(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_remembered_on_its_second_sighting() {
        let memo: Memo<u32> = Memo::with_budget(ENTITY_BYTES);
        memo.insert("once", &1, 0);
        assert_eq!(memo.get("once"), None, "seen once: not copied");
        assert_eq!(memo.bytes(), 0);
        memo.insert("once", &1, 0);
        assert_eq!(memo.get("once"), Some(1), "seen twice: remembered");
        assert!(memo.bytes() > 0);
        // Texts that never repeat leave what repeats in place.
        for i in 0..10_000 {
            memo.insert(&format!("one-off {i}"), &2, 0);
        }
        assert_eq!(memo.get("once"), Some(1));
        assert_eq!(memo.get("one-off 7"), None);
    }

    #[test]
    fn a_full_memo_starts_over_within_its_budget() {
        let memo: Memo<u32> = Memo::with_budget(4096);
        assert!(!memo.admits("abc"), "first sighting");
        assert!(memo.admits("abc"), "second sighting");
        for i in 0..100 {
            memo.store(&format!("text {i:03}"), &i, 100);
            assert!(memo.bytes() <= 4096, "{} bytes", memo.bytes());
        }
        assert_eq!(memo.get("text 099"), Some(99), "the newest is kept");
        assert_eq!(memo.get("text 000"), None, "the oldest went with a restart");
    }
}
