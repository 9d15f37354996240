//! Fast hashing for the scrape's hash maps: FNV-1a's step, a word at a time.

use std::collections::{HashMap, HashSet};

/// A map with [`Fnv`] hashing: keys here are small and not attacker-chosen,
/// and SipHash dominated a scrape of 100,000 sockets.
pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// A set with [`Fnv`] hashing.
pub type FastSet<K> = HashSet<K, std::hash::BuildHasherDefault<Fnv>>;

/// FNV-1a's xor-then-multiply step over whole integers instead of bytes: a
/// key of a scrape (a port, a namespace cookie, an address) costs one
/// multiplication per field, not one per byte, which byte-wise FNV-1a made
/// most of a scrape's own time. The multiplier is dense (FNV's sparse prime
/// is made for bytes and would leave a word's bits where they are).
#[derive(Debug)]
pub struct Fnv(u64);

/// 2^64 / φ, odd.
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn word(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl std::hash::Hasher for Fnv {
    /// The high bits brought down: a product's low bits depend only on its
    /// factors' low bits, its high bits on all of them, and the map picks
    /// buckets by the low bits.
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.word(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.word(n.into());
    }

    fn write_u16(&mut self, n: u16) {
        self.word(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.word(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.word(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.word(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    #[test]
    fn keys_that_differ_anywhere_hash_apart_in_the_low_bits() {
        let hash = |key: &dyn Fn(&mut Fnv)| {
            let mut h = Fnv::default();
            key(&mut h);
            std::hash::Hasher::finish(&h)
        };
        let build = std::hash::BuildHasherDefault::<Fnv>::default();
        // Ports of one namespace, and one port in namespaces whose cookies
        // differ in high bits only: 1,024 buckets see them all apart.
        let ports: std::collections::HashSet<u64> =
            (0..1024u16).map(|p| build.hash_one((7u64, p)) & 1023).collect();
        assert!(ports.len() > 600, "{}", ports.len());
        let cookies: std::collections::HashSet<u64> = (0..64u64)
            .map(|i| hash(&|h| std::hash::Hasher::write_u64(h, i << 40)) & 1023)
            .collect();
        assert!(cookies.len() > 48, "{}", cookies.len());
        // Bytes hash by words, a short tail included.
        assert_ne!(
            hash(&|h| std::hash::Hasher::write(h, b"abcdefghi")),
            hash(&|h| std::hash::Hasher::write(h, b"abcdefghj"))
        );
    }
}
