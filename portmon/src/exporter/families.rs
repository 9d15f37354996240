//! Turns label values and numbers into metric families, labelled by the
//! names of their definition.

use std::collections::BTreeMap;

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

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
        let family = self.by_name.entry(def.name).or_insert_with(|| {
            let mut f = MetricFamily::default();
            f.set_name(def.name.to_owned());
            f.set_help(def.help.to_owned());
            f.set_field_type(def.kind);
            f
        });
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

fn metric(names: &[&'static str], values: Vec<String>, kind: MetricType, value: f64) -> Metric {
    let pairs = names
        .iter()
        .zip(values)
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value(value);
            pair
        })
        .collect();
    let mut m = Metric::from_label(pairs);
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
