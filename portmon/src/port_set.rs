//! A set of port numbers as a 65,536-bit bitmap: 8 KiB, constant-time
//! insert and lookup, which a scrape of 100,000 sockets needs. The bitmap
//! is allocated at the first insert: a scrape makes several sets for each
//! of hundreds of namespaces, and most stay empty.

use crate::port_class::PortClass;

const WORDS: usize = 1024;

/// A set of ports, one bit each.
#[derive(Clone, Default)]
pub struct PortSet(Option<Box<[u64; WORDS]>>);

impl PortSet {
    /// Ports `low..=high`, filled a word at a time.
    pub fn range(low: u16, high: u16) -> Self {
        let mut set = Self::default();
        set.insert_range(low, high);
        set
    }

    fn words_mut(&mut self) -> &mut [u64; WORDS] {
        self.0.get_or_insert_with(|| Box::new([0; WORDS]))
    }

    fn words(&self) -> &[u64] {
        self.0.as_deref().map_or(&[], |words| &words[..])
    }

    fn word(&self, i: usize) -> u64 {
        self.words().get(i).copied().unwrap_or(0)
    }

    pub fn insert(&mut self, port: u16) {
        self.words_mut()[usize::from(port / 64)] |= 1 << (port % 64);
    }

    /// Adds `low..=high`; nothing when `low > high`.
    pub fn insert_range(&mut self, low: u16, high: u16) {
        if low > high {
            return;
        }
        let words = self.words_mut();
        let (first, last) = (usize::from(low) / 64, usize::from(high) / 64);
        let (low_mask, high_mask) = masks(low, high);
        if first == last {
            words[first] |= low_mask & high_mask;
            return;
        }
        words[first] |= low_mask;
        words[first + 1..last].fill(u64::MAX);
        words[last] |= high_mask;
    }

    /// Takes out every port of `other`.
    pub fn remove_all(&mut self, other: &PortSet) {
        if let (Some(words), Some(other)) = (self.0.as_deref_mut(), other.0.as_deref()) {
            for (word, taken) in words.iter_mut().zip(other.iter()) {
                *word &= !taken;
            }
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.word(usize::from(port / 64)) & (1 << (port % 64)) != 0
    }

    /// Number of ports in the set.
    pub fn len(&self) -> u32 {
        self.words().iter().map(|word| word.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ports of the set within a class.
    pub fn count_in(&self, class: PortClass) -> u64 {
        let (low, high) = class.bounds();
        self.count_between(low, high).into()
    }

    /// Ports of the set in `low..=high`.
    pub fn count_between(&self, low: u16, high: u16) -> u32 {
        if low > high || self.0.is_none() {
            return 0;
        }
        let (first, last) = (usize::from(low) / 64, usize::from(high) / 64);
        let (low_mask, high_mask) = masks(low, high);
        if first == last {
            return (self.word(first) & low_mask & high_mask).count_ones();
        }
        let middle: u32 = self.words()[first + 1..last].iter().map(|w| w.count_ones()).sum();
        (self.word(first) & low_mask).count_ones() + middle + (self.word(last) & high_mask).count_ones()
    }

    /// The ports in both sets.
    pub fn intersection_len(&self, other: &PortSet) -> u32 {
        self.words()
            .iter()
            .zip(other.words())
            .map(|(a, b)| (a & b).count_ones())
            .sum()
    }
}

/// The bits of the first and the last word of `low..=high` that lie in it.
fn masks(low: u16, high: u16) -> (u64, u64) {
    (u64::MAX << (low % 64), u64::MAX >> (63 - high % 64))
}

/// Equal when they hold the same ports, allocated or not.
impl PartialEq for PortSet {
    fn eq(&self, other: &Self) -> bool {
        (0..WORDS).all(|i| self.word(i) == other.word(i))
    }
}

impl Eq for PortSet {}

/// Hashes the words that hold a port, so equal sets hash alike.
impl std::hash::Hash for PortSet {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for (i, &word) in self.words().iter().enumerate() {
            if word != 0 {
                state.write_usize(i);
                state.write_u64(word);
            }
        }
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortSet({} ports)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_by_one(ranges: &[(u16, u16)]) -> PortSet {
        let mut set = PortSet::default();
        for &(low, high) in ranges {
            for port in low..=high {
                set.insert(port);
            }
        }
        set
    }

    #[test]
    fn ranges_fill_what_inserting_each_port_would() {
        let cases = [
            (0, 0),
            (0, 65_535),
            (1, 62),
            (63, 64),
            (64, 127),
            (32_768, 60_999),
            (65_535, 65_535),
            (100, 100),
        ];
        for (low, high) in cases {
            let set = PortSet::range(low, high);
            assert_eq!(set, one_by_one(&[(low, high)]), "{low}-{high}");
            assert_eq!(set.len(), u32::from(high - low) + 1);
            assert_eq!(set.count_between(low, high), set.len());
        }
        assert!(PortSet::range(10, 9).is_empty());
    }

    #[test]
    fn removing_a_set_leaves_the_rest() {
        let mut pool = PortSet::range(32_768, 60_999);
        pool.remove_all(&one_by_one(&[(40_000, 40_100), (60_999, 60_999), (1, 5)]));
        assert_eq!(pool, one_by_one(&[(32_768, 39_999), (40_101, 60_998)]));
        // Nothing to take out, and nothing to take from.
        pool.remove_all(&PortSet::default());
        assert_eq!(pool.len(), 28_232 - 102);
        let mut empty = PortSet::default();
        empty.remove_all(&pool);
        assert!(empty.is_empty());
    }

    #[test]
    fn an_empty_set_answers_without_a_bitmap() {
        let empty = PortSet::default();
        assert!(!empty.contains(80));
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.count_between(0, 65_535), 0);
        assert_eq!(empty.intersection_len(&PortSet::range(0, 65_535)), 0);
        let mut emptied = PortSet::range(80, 80);
        emptied.remove_all(&PortSet::range(80, 80));
        assert_eq!(emptied, empty);
    }
}
