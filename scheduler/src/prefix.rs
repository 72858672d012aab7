//! An approximation of each endpoint's vLLM prefix cache, for prefix-cache affinity.
//!
//! Data flow: a request's prompt becomes a chain of block hashes ([`text_block_hashes`]: one
//! hash per full 16-token block of the token estimate, i.e. 64 characters, each chained over all
//! the blocks before it as vLLM chains its KV-block hashes; [`chain_ids`] does the same for the
//! block ids of a trace). [`PrefixIndex::matches`] counts, per endpoint, how many leading blocks
//! it is believed to hold; after the pick, [`PrefixIndex::record`] remembers the blocks on the
//! chosen endpoint(s). Each endpoint keeps a bounded LRU (llm-d's `lruCapacityPerServer`,
//! 31,250 blocks by default), and a reverse map hash -> endpoints makes the match cost
//! proportional to the endpoints that share the prompt's first blocks, not to the pool size.
//!
//! Like llm-d's `approx-prefix-cache-producer`, it is a belief, not the engine's truth: an
//! evicted block on the server is still counted until the LRU drops it here.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Tokens per block (vLLM's default block size).
pub const BLOCK_TOKENS: usize = 16;
/// Characters per block at 4 characters per token.
pub const BLOCK_CHARS: usize = BLOCK_TOKENS * crate::request::CHARS_PER_TOKEN;
/// Cap on blocks hashed per request (llm-d's `maxPrefixBlocksToMatch`).
pub const MAX_BLOCKS: usize = 256;
/// Blocks remembered per endpoint (llm-d's `lruCapacityPerServer`).
pub const DEFAULT_LRU_BLOCKS: usize = 31_250;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Final avalanche (splitmix64) so that chained FNV values spread over the identity hasher.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Block hashes of `text` for `model`: the seed is the model name, `h_i = H(block_i ‖ h_{i−1})`,
/// trailing partial block ignored, at most [`MAX_BLOCKS`].
pub fn text_block_hashes(model: &str, text: &str, out: &mut Vec<u64>) {
    out.clear();
    let mut h = mix(fnv(FNV_OFFSET, model.as_bytes()));
    for block in text.as_bytes().chunks_exact(BLOCK_CHARS).take(MAX_BLOCKS) {
        h = mix(fnv(fnv(FNV_OFFSET, block), &h.to_le_bytes()));
        out.push(h);
    }
}

/// Chains a trace's per-block ids (whose block size is the trace's) into prefix hashes.
pub fn chain_ids(ids: &[u64], out: &mut Vec<u64>) {
    out.clear();
    let mut h = FNV_OFFSET;
    for id in ids.iter().take(MAX_BLOCKS) {
        h = mix(h ^ mix(*id));
        out.push(h);
    }
}

/// The keys are already hashes: no need to hash them again.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Lists longer than this become bitsets: a system prompt sent everywhere is owned by the
/// whole pool, and intersecting bitsets keeps a lookup at a few words per block.
const LIST_MAX: usize = 64;

/// The endpoints holding one block.
#[derive(Debug, Clone)]
enum Owners {
    List(Vec<u32>),
    Bits { words: Vec<u64>, count: usize },
}

impl Default for Owners {
    fn default() -> Self {
        Owners::List(Vec::new())
    }
}

impl Owners {
    fn add(&mut self, e: u32) {
        match self {
            Owners::List(l) => {
                l.push(e);
                if l.len() > LIST_MAX {
                    let mut words = Vec::new();
                    for &x in l.iter() {
                        set_bit(&mut words, x);
                    }
                    let count = l.len();
                    *self = Owners::Bits { words, count };
                }
            }
            Owners::Bits { words, count } => {
                if !get_bit(words, e) {
                    set_bit(words, e);
                    *count += 1;
                }
            }
        }
    }

    /// Removes `e`; true when nobody is left.
    fn remove(&mut self, e: u32) -> bool {
        match self {
            Owners::List(l) => {
                l.retain(|x| *x != e);
                l.is_empty()
            }
            Owners::Bits { words, count } => {
                if get_bit(words, e) {
                    words[e as usize / 64] &= !(1u64 << (e % 64));
                    *count -= 1;
                }
                *count == 0
            }
        }
    }
}

/// Sets in `alive` the owners below `n`.
fn fill(alive: &mut [u64], owners: &Owners, n: usize) {
    match owners {
        Owners::List(l) => {
            for &e in l {
                if (e as usize) < n {
                    alive[e as usize / 64] |= 1u64 << (e % 64);
                }
            }
        }
        Owners::Bits { words, .. } => {
            for (a, w) in alive.iter_mut().zip(words) {
                *a = *w;
            }
            // Bits at or above `n` in the last word are not candidates.
            if !n.is_multiple_of(64)
                && let Some(last) = alive.get_mut(n / 64)
            {
                *last &= (1u64 << (n % 64)) - 1;
            }
        }
    }
}

fn set_bit(words: &mut Vec<u64>, e: u32) {
    let w = e as usize / 64;
    if words.len() <= w {
        words.resize(w + 1, 0);
    }
    words[w] |= 1u64 << (e % 64);
}

fn get_bit(words: &[u64], e: u32) -> bool {
    words
        .get(e as usize / 64)
        .is_some_and(|w| w & (1u64 << (e % 64)) != 0)
}

#[derive(Debug, Default, Clone)]
struct Lru {
    /// hash -> tick of its last use.
    last_use: IdMap<u64>,
    /// (hash, tick) in use order; entries whose tick is older than `last_use` are stale.
    order: VecDeque<(u64, u64)>,
}

/// Per-endpoint LRUs of block hashes plus the reverse map.
#[derive(Debug, Clone)]
pub struct PrefixIndex {
    capacity: usize,
    tick: u64,
    endpoints: Vec<Lru>,
    owners: IdMap<Owners>,
    /// Scratch bitsets of [`PrefixIndex::matches`].
    alive: std::cell::RefCell<(Vec<u64>, Vec<u64>)>,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self::new(DEFAULT_LRU_BLOCKS)
    }
}

impl PrefixIndex {
    /// An index remembering at most `capacity` blocks per endpoint.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tick: 0,
            endpoints: Vec::new(),
            owners: IdMap::default(),
            alive: Default::default(),
        }
    }

    /// For every endpoint slot `< out.len()`, the number of leading blocks of `hashes` it
    /// holds (written into `out`, which is zeroed first).
    pub fn matches(&self, hashes: &[u64], out: &mut [u32]) {
        out.fill(0);
        let n = out.len();
        let Some(first) = hashes.first().and_then(|h| self.owners.get(h)) else {
            return;
        };
        let words = n.div_ceil(64);
        let mut scratch = self.alive.borrow_mut();
        let (alive, next) = &mut *scratch;
        alive.clear();
        alive.resize(words, 0);
        fill(alive, first, n);
        let mut matched = 1u32;
        for h in &hashes[1..] {
            next.clear();
            next.resize(words, 0);
            match self.owners.get(h) {
                None => {}
                Some(Owners::List(l)) => {
                    for &e in l {
                        if get_bit(alive, e) {
                            next[e as usize / 64] |= 1u64 << (e % 64);
                        }
                    }
                }
                Some(Owners::Bits { words: b, .. }) => {
                    for (i, w) in next.iter_mut().enumerate() {
                        *w = alive[i] & b.get(i).copied().unwrap_or(0);
                    }
                }
            }
            // Endpoints that held the blocks so far but not this one stop here.
            for (i, (a, x)) in alive.iter().zip(next.iter()).enumerate() {
                let mut dropped = a & !x;
                while dropped != 0 {
                    let e = i * 64 + dropped.trailing_zeros() as usize;
                    out[e] = matched;
                    dropped &= dropped - 1;
                }
            }
            std::mem::swap(alive, next);
            if alive.iter().all(|w| *w == 0) {
                return;
            }
            matched += 1;
        }
        for (i, a) in alive.iter().enumerate() {
            let mut left = *a;
            while left != 0 {
                let e = i * 64 + left.trailing_zeros() as usize;
                out[e] = matched;
                left &= left - 1;
            }
        }
    }

    /// Leading blocks of `hashes` held by one endpoint.
    pub fn matched_blocks(&self, slot: usize, hashes: &[u64]) -> usize {
        let Some(lru) = self.endpoints.get(slot) else {
            return 0;
        };
        hashes
            .iter()
            .take_while(|h| lru.last_use.contains_key(h))
            .count()
    }

    /// Remembers that endpoint `slot` now holds `hashes` (most recently used).
    pub fn record(&mut self, slot: usize, hashes: &[u64]) {
        if self.endpoints.len() <= slot {
            self.endpoints.resize_with(slot + 1, Lru::default);
        }
        let Ok(slot32) = u32::try_from(slot) else {
            return;
        };
        for h in hashes {
            self.tick += 1;
            let lru = &mut self.endpoints[slot];
            if lru.last_use.insert(*h, self.tick).is_none() {
                self.owners.entry(*h).or_default().add(slot32);
            }
            lru.order.push_back((*h, self.tick));
        }
        self.evict(slot);
    }

    fn evict(&mut self, slot: usize) {
        let lru = &mut self.endpoints[slot];
        // Touches leave stale (hash, old tick) entries behind; drop them before they pile up.
        if lru.order.len() > 4 * self.capacity {
            let live = &lru.last_use;
            lru.order.retain(|(h, t)| live.get(h) == Some(t));
        }
        while lru.last_use.len() > self.capacity {
            let Some((h, t)) = lru.order.pop_front() else {
                break;
            };
            if lru.last_use.get(&h) == Some(&t) {
                lru.last_use.remove(&h);
                if let Some(o) = self.owners.get_mut(&h)
                    && o.remove(slot as u32)
                {
                    self.owners.remove(&h);
                }
            }
        }
    }

    /// Forgets everything about endpoint `slot` (it left the pool or restarted).
    pub fn forget(&mut self, slot: usize) {
        let Some(lru) = self.endpoints.get_mut(slot) else {
            return;
        };
        let lru = std::mem::take(lru);
        for h in lru.last_use.keys() {
            if let Some(o) = self.owners.get_mut(h)
                && o.remove(slot as u32)
            {
                self.owners.remove(h);
            }
        }
    }

    /// Blocks remembered for endpoint `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.endpoints.get(slot).map_or(0, |l| l.last_use.len())
    }

    /// Whether nothing is remembered anywhere.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_prefixes_share_leading_hashes_only() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let base = "x".repeat(BLOCK_CHARS * 3);
        text_block_hashes("m", &format!("{base}{}", "a".repeat(BLOCK_CHARS)), &mut a);
        text_block_hashes(
            "m",
            &format!("{base}{}", "b".repeat(BLOCK_CHARS + 10)),
            &mut b,
        );
        assert_eq!(a.len(), 4);
        assert_eq!(b.len(), 4, "trailing partial block ignored");
        assert_eq!(a[..3], b[..3]);
        assert_ne!(a[3], b[3]);
        let mut c = Vec::new();
        text_block_hashes("other-model", &base, &mut c);
        assert_ne!(c[0], a[0], "the model seeds the chain");
    }

    #[test]
    fn matches_count_leading_blocks_per_endpoint() {
        let mut idx = PrefixIndex::new(100);
        let mut h = Vec::new();
        chain_ids(&[1, 2, 3, 4], &mut h);
        idx.record(0, &h[..2]);
        idx.record(2, &h);
        let mut g = Vec::new();
        chain_ids(&[1, 9, 3, 4], &mut g);
        idx.record(1, &g);
        let mut out = [9u32; 4];
        idx.matches(&h, &mut out);
        assert_eq!(out, [2, 1, 4, 0]);
        assert_eq!(idx.matched_blocks(2, &h), 4);
        idx.forget(2);
        idx.matches(&h, &mut out);
        assert_eq!(out, [2, 1, 0, 0]);
    }

    #[test]
    fn lru_evicts_least_recently_used_blocks() {
        let mut idx = PrefixIndex::new(3);
        idx.record(0, &[10, 11, 12]);
        idx.record(0, &[10]); // touch 10
        idx.record(0, &[13]); // evicts 11
        assert_eq!(idx.len(0), 3);
        assert_eq!(idx.matched_blocks(0, &[10]), 1);
        assert_eq!(idx.matched_blocks(0, &[11]), 0);
        let mut out = [0u32; 1];
        idx.matches(&[11], &mut out);
        assert_eq!(out, [0], "evicted blocks leave the reverse map");
    }

    #[test]
    fn a_block_held_by_the_whole_pool_uses_a_bitset() {
        let mut idx = PrefixIndex::new(10);
        let mut h = Vec::new();
        chain_ids(&[1, 2, 3], &mut h);
        for slot in 0..200 {
            idx.record(slot, &h[..1 + slot % 3]);
        }
        assert!(matches!(
            idx.owners.get(&h[0]),
            Some(Owners::Bits { count: 200, .. })
        ));
        let mut out = vec![0u32; 150];
        idx.matches(&h, &mut out);
        for (slot, m) in out.iter().enumerate() {
            assert_eq!(*m as usize, 1 + slot % 3, "slot {slot}");
        }
        for slot in 0..200 {
            idx.forget(slot);
        }
        assert!(idx.is_empty());
    }

    proptest! {
        #[test]
        fn matches_agree_with_per_endpoint_lookup(
            records in proptest::collection::vec((0usize..140, proptest::collection::vec(0u64..4, 0..6)), 0..400),
            query in proptest::collection::vec(0u64..6, 0..6),
            cap in 1usize..8,
        ) {
            let mut idx = PrefixIndex::new(cap);
            let mut h = Vec::new();
            for (slot, ids) in &records {
                chain_ids(ids, &mut h);
                idx.record(*slot, &h);
                prop_assert!(idx.len(*slot) <= cap);
            }
            chain_ids(&query, &mut h);
            let mut out = [0u32; 130];
            idx.matches(&h, &mut out);
            for (slot, m) in out.iter().enumerate() {
                prop_assert_eq!(*m as usize, idx.matched_blocks(slot, &h));
            }
        }
    }
}
