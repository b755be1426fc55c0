//! The mock's prefix cache: least-recently-used blocks of words, each keyed by a hash of
//! itself and every block before it (so a block matches only after the same prefix).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// An LRU cache of prefix blocks.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    capacity: usize,
    block: usize,
    /// Block hash -> when it was last used.
    used: HashMap<u64, u64>,
    /// When -> block hash: the oldest first.
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl PrefixCache {
    pub(crate) fn new(capacity: usize, block: usize) -> Self {
        PrefixCache {
            capacity: capacity.max(1),
            block: block.max(1),
            used: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Looks up the leading blocks of `prompt` (its words), then stores every full block
    /// of `prompt` followed by `reply`; returns the prompt's cached tokens: its leading
    /// blocks found, at most all but its last token.
    pub(crate) fn serve<'a>(
        &mut self,
        prompt: &[&'a str],
        reply: impl Iterator<Item = &'a str>,
    ) -> u64 {
        let words: Vec<&str> = prompt.iter().copied().chain(reply).collect();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let hashes: Vec<u64> = words
            .chunks_exact(self.block)
            .map(|b| {
                b.hash(&mut hasher);
                hasher.finish()
            })
            .collect();
        let most = prompt.len().saturating_sub(1) / self.block;
        let hit = hashes
            .iter()
            .take(most)
            .take_while(|h| self.used.contains_key(h))
            .count();
        for h in hashes {
            self.tick += 1;
            if let Some(old) = self.used.insert(h, self.tick) {
                self.order.remove(&old);
            }
            self.order.insert(self.tick, h);
            while self.used.len() > self.capacity {
                match self.order.pop_first() {
                    Some((_, oldest)) => {
                        self.used.remove(&oldest);
                    }
                    None => break,
                }
            }
        }
        (hit * self.block) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_blocks_hit_until_evicted() {
        let mut c = PrefixCache::new(4, 2);
        let p: Vec<&str> = "a b c d e".split(' ').collect();
        assert_eq!(c.serve(&p, std::iter::empty()), 0, "cold");
        assert_eq!(
            c.serve(&p, std::iter::empty()),
            4,
            "two blocks; the last token is computed"
        );
        let q: Vec<&str> = "a b x d e f".split(' ').collect();
        assert_eq!(
            c.serve(&q, std::iter::empty()),
            2,
            "the second block differs"
        );
        // Another prefix's three blocks push the oldest out: "a b" was used last by q, so
        // "c d" (from p) and then q's "a b" go.
        let r: Vec<&str> = "u v w x y z".split(' ').collect();
        assert_eq!(c.serve(&r, std::iter::empty()), 0);
        assert_eq!(c.serve(&p, std::iter::empty()), 0, "evicted");
        // A reply's blocks are stored: the next turn finds them.
        let mut c = PrefixCache::new(100, 2);
        let turn1: Vec<&str> = "a b c".split(' ').collect();
        assert_eq!(c.serve(&turn1, "tok tok tok".split(' ')), 0);
        let turn2: Vec<&str> = "a b c tok tok tok d e".split(' ').collect();
        assert_eq!(c.serve(&turn2, std::iter::empty()), 6);
    }
}
