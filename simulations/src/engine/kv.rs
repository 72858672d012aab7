//! The paged KV cache of one replica, with vLLM's automatic prefix caching.
//!
//! Blocks are counted, not stored: a block is either *used* (held by running requests; a cached
//! prefix block shared by several requests counts once), *evictable* (freed but still holding a
//! hashed prefix block, hittable until reused) or *clean*. Allocation takes clean blocks first and
//! then evicts the least recently freed cached block, which is the order vLLM's free-block queue
//! produces. Only full prompt blocks carry hashes; generated tokens' blocks are never shared (the
//! traces carry no content for them).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Where a cached block is.
#[derive(Debug, Clone, Copy)]
enum Cached {
    /// Held by `refs` running requests.
    Active { refs: u32 },
    /// Free, in the LRU queue under this sequence number.
    Evictable { seq: u64 },
}

/// Block keys are already uniformly mixed 64-bit hashes, so the map uses them as they are
/// instead of hashing them again (SipHash dominated the simulator's profile).
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Block accounting plus the prefix-cache index.
#[derive(Debug, Clone)]
pub struct KvCache {
    total: u64,
    used: u64,
    cached: HashMap<u64, Cached, BuildHasherDefault<KeyHasher>>,
    /// Evictable blocks in the order they were freed (oldest first), as (sequence, key). Entries
    /// whose block was hit again since are stale and skipped: `cached` says whether an entry is
    /// live (its key is `Evictable` with the same sequence number).
    lru: VecDeque<(u64, u64)>,
    /// Live entries in `lru`.
    evictable: u64,
    next_seq: u64,
    prefix_caching: bool,
}

impl KvCache {
    /// A cache of `total` blocks.
    pub fn new(total: u64, prefix_caching: bool) -> Self {
        Self {
            total,
            used: 0,
            cached: HashMap::default(),
            lru: VecDeque::new(),
            evictable: 0,
            next_seq: 0,
            prefix_caching,
        }
    }

    pub fn total_blocks(&self) -> u64 {
        self.total
    }

    /// Blocks held by running requests.
    pub fn used_blocks(&self) -> u64 {
        self.used
    }

    /// Blocks that an allocation can take (clean plus evictable).
    pub fn available_blocks(&self) -> u64 {
        self.total - self.used
    }

    /// Blocks that can be allocated without evicting a cached prefix block.
    pub fn clean_blocks(&self) -> u64 {
        self.total - self.used - self.evictable
    }

    /// `vllm:kv_cache_usage_perc`: used blocks over total.
    pub fn usage(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.used as f64 / self.total as f64
        }
    }

    /// How many leading `keys` are cached, and how many of those are evictable (taking them
    /// removes them from the available pool). Looks only; changes nothing.
    pub fn probe(&self, keys: &[u64]) -> (usize, u64) {
        if !self.prefix_caching {
            return (0, 0);
        }
        let mut evictable = 0;
        for (i, k) in keys.iter().enumerate() {
            match self.cached.get(k) {
                Some(Cached::Evictable { .. }) => evictable += 1,
                Some(Cached::Active { .. }) => {}
                None => return (i, evictable),
            }
        }
        (keys.len(), evictable)
    }

    /// Takes references on the first `n` keys (which `probe` reported cached).
    pub fn acquire(&mut self, keys: &[u64]) {
        for k in keys {
            match self.cached.get_mut(k) {
                Some(Cached::Active { refs }) => *refs += 1,
                Some(entry @ Cached::Evictable { .. }) => {
                    // The LRU entry goes stale; it is skipped when it reaches the front.
                    *entry = Cached::Active { refs: 1 };
                    self.evictable -= 1;
                    self.used += 1;
                }
                None => {}
            }
        }
    }

    /// Whether `n` fresh blocks can be allocated now.
    pub fn can_allocate(&self, n: u64) -> bool {
        n <= self.available_blocks()
    }

    /// Allocates `n` fresh blocks, evicting cached ones if clean blocks run out. The caller checks
    /// `can_allocate` first; an oversized request is clamped (and reported false).
    pub fn allocate(&mut self, n: u64) -> bool {
        if n > self.available_blocks() {
            return false;
        }
        let mut evict = n.saturating_sub(self.clean_blocks());
        while evict > 0 {
            let Some((seq, key)) = self.lru.pop_front() else {
                break;
            };
            if matches!(self.cached.get(&key), Some(Cached::Evictable { seq: s }) if *s == seq) {
                self.cached.remove(&key);
                self.evictable -= 1;
                evict -= 1;
            }
        }
        if self.lru.len() as u64 > 4 * self.evictable + 1024 {
            // Drop stale entries so the queue stays proportional to what it holds.
            let cached = &self.cached;
            self.lru.retain(|(seq, key)| {
                matches!(cached.get(key), Some(Cached::Evictable { seq: s }) if s == seq)
            });
        }
        self.used += n;
        true
    }

    /// Gives a computed full prompt block a hash so later requests can hit it. The block is
    /// already counted as used by its owner; returns whether the key now refers to it (false when
    /// the key is cached already, in which case the block stays private to its owner).
    pub fn register(&mut self, key: u64) -> bool {
        if !self.prefix_caching || self.cached.contains_key(&key) {
            return false;
        }
        self.cached.insert(key, Cached::Active { refs: 1 });
        true
    }

    /// Releases a request's blocks: `keys` are the cached blocks it referenced, `private` the
    /// blocks only it held.
    pub fn release(&mut self, keys: &[u64], private: u64) {
        for k in keys {
            if let Some(Cached::Active { refs }) = self.cached.get_mut(k) {
                if *refs > 1 {
                    *refs -= 1;
                } else {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.cached.insert(*k, Cached::Evictable { seq });
                    self.lru.push_back((seq, *k));
                    self.evictable += 1;
                    self.used -= 1;
                }
            }
        }
        self.used -= private.min(self.used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_prefix_blocks_stay_hittable_until_evicted() {
        let mut kv = KvCache::new(4, true);
        assert!(kv.allocate(2));
        assert!(kv.register(10) && kv.register(11));
        kv.release(&[10, 11], 0);
        assert_eq!(kv.used_blocks(), 0);
        assert_eq!(kv.probe(&[10, 11, 12]), (2, 2));
        // Clean blocks go first: two fresh blocks keep the cache intact.
        assert!(kv.allocate(2));
        assert_eq!(kv.probe(&[10, 11]), (2, 2));
        // The next one evicts the oldest freed block (10), which breaks the chain at its head.
        assert!(kv.allocate(1));
        assert_eq!(kv.probe(&[10, 11]).0, 0);
        assert_eq!(kv.probe(&[11]).0, 1);
        assert!(!kv.allocate(2));
    }

    #[test]
    fn shared_blocks_count_once_and_free_on_last_release() {
        let mut kv = KvCache::new(8, true);
        assert!(kv.allocate(1));
        kv.register(7);
        kv.acquire(&[7]);
        assert_eq!(kv.used_blocks(), 1);
        kv.release(&[7], 0);
        assert_eq!(kv.used_blocks(), 1);
        kv.release(&[7], 0);
        assert_eq!(kv.used_blocks(), 0);
        assert_eq!(kv.probe(&[7]), (1, 1));
        kv.acquire(&[7]);
        assert_eq!(kv.used_blocks(), 1);
    }
}
