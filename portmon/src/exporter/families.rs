//! Turns label values and numbers into metric families, labelled by the
//! names of their definition.

use std::collections::BTreeMap;

use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use super::definitions::Definition;

/// Series of one family: label values (in the definition's order) → value.
pub type Series = BTreeMap<Vec<String>, f64>;

/// The families of one scrape.
#[derive(Debug)]
pub struct Families {
    /// Whether per-port families carry `netns` this scrape.
    with_netns: bool,
    by_name: BTreeMap<&'static str, MetricFamily>,
}

impl Families {
    pub fn new(with_netns: bool) -> Self {
        Self {
            with_netns,
            by_name: BTreeMap::new(),
        }
    }

    /// Whether per-port families carry `netns` this scrape.
    pub fn with_netns(&self) -> bool {
        self.with_netns
    }

    /// Adds series to the family `def`.
    pub fn add(&mut self, def: &Definition, series: impl IntoIterator<Item = (Vec<String>, f64)>) {
        let names: Vec<&'static str> = def.label_names(self.with_netns).collect();
        let family = self.family(def);
        for (values, value) in series {
            debug_assert_eq!(
                values.len(),
                names.len(),
                "{}: values {values:?} for labels {names:?}",
                def.name
            );
            family.mut_metric().push(metric(&names, values, def.kind, value));
        }
    }

    /// Adds histograms to the family `def`: label values, then each
    /// bucket's upper bound with its count (not cumulative), the last one
    /// infinite, and the sum of the values observed.
    pub fn add_histograms(
        &mut self,
        def: &Definition,
        series: impl IntoIterator<Item = (Vec<String>, Vec<(f64, u64)>, f64)>,
    ) {
        let names: Vec<&'static str> = def.label_names(self.with_netns).collect();
        let family = self.family(def);
        for (values, buckets, sum) in series {
            let mut m = Metric::from_label(labels(&names, values));
            let mut h = Histogram::default();
            let mut cumulative = 0u64;
            let mut written = Vec::with_capacity(buckets.len());
            for (bound, n) in buckets {
                cumulative = cumulative.saturating_add(n);
                // The exposition writes +Inf itself from the sample count.
                if bound.is_finite() {
                    let mut b = Bucket::default();
                    b.set_upper_bound(bound);
                    b.set_cumulative_count(cumulative);
                    written.push(b);
                }
            }
            h.set_bucket(written);
            h.set_sample_count(cumulative);
            h.set_sample_sum(sum);
            m.set_histogram(h);
            family.mut_metric().push(m);
        }
    }

    fn family(&mut self, def: &Definition) -> &mut MetricFamily {
        self.by_name.entry(def.name).or_insert_with(|| {
            let mut f = MetricFamily::default();
            f.set_name(def.name.to_owned());
            f.set_help(def.help.to_owned());
            f.set_field_type(def.kind);
            f
        })
    }

    /// Adds the one series of an unlabelled family.
    pub fn add_one(&mut self, def: &Definition, value: f64) {
        self.add(def, [(Vec::new(), value)]);
    }

    /// The families with at least one series.
    pub fn finish(self) -> Vec<MetricFamily> {
        self.by_name
            .into_values()
            .filter(|f| !f.get_metric().is_empty())
            .collect()
    }
}

fn labels(names: &[&'static str], values: Vec<String>) -> Vec<LabelPair> {
    names
        .iter()
        .zip(values)
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value(value);
            pair
        })
        .collect()
}

fn metric(names: &[&'static str], values: Vec<String>, kind: MetricType, value: f64) -> Metric {
    let mut m = Metric::from_label(labels(names, values));
    if kind == MetricType::COUNTER {
        let mut c = Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    m
}
