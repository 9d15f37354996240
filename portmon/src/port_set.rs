//! A set of port numbers as a 65,536-bit bitmap: 8 KiB, constant-time
//! insert and lookup, which a scrape of 100,000 sockets needs.

use crate::port_class::PortClass;

/// A set of ports, one bit each.
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet(Box<[u64; 1024]>);

impl Default for PortSet {
    fn default() -> Self {
        Self(Box::new([0; 1024]))
    }
}

impl PortSet {
    pub fn insert(&mut self, port: u16) {
        self.0[usize::from(port / 64)] |= 1 << (port % 64);
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port / 64)] & (1 << (port % 64)) != 0
    }

    /// Number of ports in the set.
    pub fn len(&self) -> u32 {
        self.0.iter().map(|word| word.count_ones()).sum()
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
        if low > high {
            return 0;
        }
        let words = &self.0;
        let (first, last) = (usize::from(low) / 64, usize::from(high) / 64);
        // Masks keep only the bits of the first and last word that lie in the range.
        let low_mask = u64::MAX << (low % 64);
        let high_mask = u64::MAX >> (63 - high % 64);
        if first == last {
            return (words[first] & low_mask & high_mask).count_ones();
        }
        let middle: u32 = words[first + 1..last].iter().map(|w| w.count_ones()).sum();
        (words[first] & low_mask).count_ones() + middle + (words[last] & high_mask).count_ones()
    }

    /// The ports in both sets.
    pub fn intersection_len(&self, other: &PortSet) -> u32 {
        self.0
            .iter()
            .zip(other.0.iter())
            .map(|(a, b)| (a & b).count_ones())
            .sum()
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortSet({} ports)", self.len())
    }
}
