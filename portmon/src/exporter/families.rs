//! Turns label values and numbers into metric families, labelled by the
//! names of their definition, and writes them in the Prometheus text format
//! (version 0.0.4) as they come.
//!
//! Why not through the `prometheus` crate's registry: its `MetricFamily`
//! holds every series as a message with a string for each label name and
//! value, `Registry::gather` sorts each family's series by their label
//! values, and the encoder then walks them again. Each namespace adds about
//! thirty series, so on a host of many namespaces that work grew with them
//! and became most of a scrape's user-space cost. Writing each series once,
//! into its family's text, keeps the format and drops the rest; series
//! come in the order their family's code adds them, which the format
//! allows (it asks only that a family's series stand together).

use std::{collections::BTreeMap, fmt::Write as _};

use prometheus::proto::MetricType;

use super::definitions::Definition;

/// Series of one family: label values (in the definition's order) → value.
pub type Series = BTreeMap<Vec<String>, f64>;

/// The families of one scrape.
#[derive(Debug)]
pub struct Families {
    /// Whether per-port families carry `netns` this scrape.
    with_netns: bool,
    by_name: BTreeMap<&'static str, Family>,
}

/// One family's header and the text of its series so far.
#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: MetricType,
    samples: String,
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
        let samples = &mut self.family(def).samples;
        for (values, value) in series {
            debug_assert_eq!(
                values.len(),
                names.len(),
                "{}: values {values:?} for labels {names:?}",
                def.name
            );
            write_sample(samples, def.name, "", &names, &values, None, value);
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
        let samples = &mut self.family(def).samples;
        let mut bound_text = String::new();
        for (values, buckets, sum) in series {
            let mut line = |suffix: &str, le: Option<&str>, value: f64| {
                let le = le.map(|bound| ("le", bound));
                write_sample(samples, def.name, suffix, &names, &values, le, value);
            };
            let mut cumulative = 0u64;
            for (bound, n) in buckets {
                cumulative = cumulative.saturating_add(n);
                // The +Inf bucket is written below, from the count.
                if bound.is_finite() {
                    bound_text.clear();
                    write_number(&mut bound_text, bound);
                    line("_bucket", Some(&bound_text), cumulative as f64);
                }
            }
            let count = cumulative as f64;
            line("_bucket", Some("+Inf"), count);
            line("_sum", None, sum);
            line("_count", None, count);
        }
    }

    fn family(&mut self, def: &Definition) -> &mut Family {
        self.by_name.entry(def.name).or_insert_with(|| Family {
            help: def.help,
            kind: def.kind,
            samples: String::new(),
        })
    }

    /// Adds the one series of an unlabelled family.
    pub fn add_one(&mut self, def: &Definition, value: f64) {
        self.add(def, [(Vec::new(), value)]);
    }

    /// The exposition of the families with at least one series, by name.
    pub fn finish(self) -> String {
        let families: Vec<(&str, Family)> = self
            .by_name
            .into_iter()
            .filter(|(_, f)| !f.samples.is_empty())
            .collect();
        let size = families
            .iter()
            .map(|(name, f)| 2 * name.len() + f.help.len() + f.samples.len() + 32)
            .sum();
        let mut out = String::with_capacity(size);
        for (name, family) in families {
            let kind = match family.kind {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                MetricType::SUMMARY => "summary",
                MetricType::UNTYPED => "untyped",
            };
            out.push_str("# HELP ");
            out.push_str(name);
            out.push(' ');
            write_escaped(&mut out, family.help, false);
            out.push_str("\n# TYPE ");
            out.push_str(name);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            out.push_str(&family.samples);
        }
        out
    }
}

/// One line: `name{label="value",…} value`.
fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    names: &[&str],
    values: &[String],
    extra: Option<(&str, &str)>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let pairs = names
        .iter()
        .zip(values.iter().map(String::as_str))
        .map(|(n, v)| (*n, v))
        .chain(extra);
    let mut separator = '{';
    for (label, text) in pairs {
        out.push(separator);
        out.push_str(label);
        out.push_str("=\"");
        write_escaped(out, text, true);
        out.push('"');
        separator = ',';
    }
    if separator == ',' {
        out.push('}');
    }
    out.push(' ');
    write_number(out, value);
    out.push('\n');
}

/// A sample value or bucket bound as the format spells it.
fn write_number(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        // Writing to a String cannot fail.
        let _ = write!(out, "{value}");
    }
}

/// `text` with `\`, a newline and (in a label value) `"` escaped.
fn write_escaped(out: &mut String, text: &str, quote: bool) {
    let special = |c: char| c == '\\' || c == '\n' || (quote && c == '"');
    if !text.contains(special) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKLOAD: Definition = Definition {
        name: "portmon_test_info",
        help: "A help text with a \\ and a\nsecond line.",
        kind: MetricType::GAUGE,
        labels: &["unit", "netns"],
        netns_optional: false,
    };

    const EVENTS: Definition = Definition {
        name: "portmon_test_total",
        help: "Unlabelled.",
        kind: MetricType::COUNTER,
        labels: &[],
        netns_optional: false,
    };

    const WAITS: Definition = Definition {
        name: "portmon_test_seconds",
        help: "Waits.",
        kind: MetricType::HISTOGRAM,
        labels: &["netns"],
        netns_optional: false,
    };

    #[test]
    fn label_values_and_help_are_escaped_as_the_format_asks() {
        let mut families = Families::new(true);
        let odd = "a \"quoted\" \\ back\nslash, ünit".to_owned();
        families.add(&WORKLOAD, [(vec![odd, "blue".to_owned()], 1.0)]);
        assert_eq!(
            families.finish(),
            "# HELP portmon_test_info A help text with a \\\\ and a\\nsecond line.\n\
             # TYPE portmon_test_info gauge\n\
             portmon_test_info{unit=\"a \\\"quoted\\\" \\\\ back\\nslash, ünit\",netns=\"blue\"} 1\n"
        );
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        let mut families = Families::new(true);
        let at = |netns: &str, value| (vec![String::new(), netns.to_owned()], value);
        families.add(
            &WORKLOAD,
            [
                at("a", 28232.0),
                at("b", 0.5),
                at("c", f64::INFINITY),
                at("d", f64::NEG_INFINITY),
                at("e", f64::NAN),
            ],
        );
        families.add_one(&EVENTS, 3.0);
        let text = families.finish();
        let values: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(_, v)| v))
            .collect();
        assert_eq!(values, ["28232", "0.5", "+Inf", "-Inf", "NaN", "3"]);
        assert!(text.contains("\nportmon_test_total 3\n"), "{text}");
    }

    #[test]
    fn histograms_are_cumulative_with_an_infinite_bucket_a_sum_and_a_count() {
        let mut families = Families::new(true);
        families.add_histograms(
            &WAITS,
            [(
                vec!["blue".to_owned()],
                vec![(0.001, 2), (0.5, 0), (f64::INFINITY, 3)],
                7.25,
            )],
        );
        assert_eq!(
            families.finish(),
            "# HELP portmon_test_seconds Waits.\n\
             # TYPE portmon_test_seconds histogram\n\
             portmon_test_seconds_bucket{netns=\"blue\",le=\"0.001\"} 2\n\
             portmon_test_seconds_bucket{netns=\"blue\",le=\"0.5\"} 2\n\
             portmon_test_seconds_bucket{netns=\"blue\",le=\"+Inf\"} 5\n\
             portmon_test_seconds_sum{netns=\"blue\"} 7.25\n\
             portmon_test_seconds_count{netns=\"blue\"} 5\n"
        );
    }

    #[test]
    fn families_without_series_are_left_out_and_the_rest_come_by_name() {
        let mut families = Families::new(true);
        families.add(&WORKLOAD, []);
        families.add_one(&EVENTS, 1.0);
        families.add_histograms(&WAITS, [(vec!["x".to_owned()], vec![(f64::INFINITY, 1)], 1.0)]);
        let text = families.finish();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(names, ["portmon_test_seconds", "portmon_test_total"]);
    }
}
