//! The one table the benchmark prints, and its JSON form: every figure next
//! to the baseline it was measured against in the same run, their ratio,
//! and the target where it has one.

use std::fmt::Write as _;

use serde::Serialize;

/// What a figure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    RecordsPerSecond,
    TransfersPerSecond,
    Milliseconds,
    Seconds,
    /// A share, in percent (or percentage points).
    Percent,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::RecordsPerSecond => "rec/s",
            Unit::TransfersPerSecond => "tr/s",
            Unit::Milliseconds => "ms",
            Unit::Seconds => "s",
            Unit::Percent => "%",
        }
    }
}

/// A measured amount in its unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Value {
    pub value: f64,
    pub unit: Unit,
}

impl Value {
    pub fn new(value: f64, unit: Unit) -> Self {
        Value { value, unit }
    }

    fn render(self) -> String {
        let number = match self.unit {
            Unit::RecordsPerSecond | Unit::TransfersPerSecond => thousands(self.value),
            Unit::Milliseconds => format!("{:.1}", self.value),
            Unit::Seconds => format!("{:.3}", self.value),
            Unit::Percent => format!("{:.2}", self.value),
        };
        format!("{number} {}", self.unit.suffix())
    }
}

/// The goal for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// measured / baseline must reach this.
    RatioAtLeast { ratio: f64 },
    /// measured / baseline must stay at or below this.
    RatioAtMost { ratio: f64 },
    /// The measured value itself must reach this (same unit).
    AtLeast { value: f64 },
    /// The measured value itself must stay at or below this (same unit).
    AtMost { value: f64 },
}

impl Target {
    fn met(self, measured: f64, ratio: f64) -> bool {
        match self {
            Target::RatioAtLeast { ratio: goal } => ratio >= goal,
            Target::RatioAtMost { ratio: goal } => ratio <= goal,
            Target::AtLeast { value } => measured >= value,
            Target::AtMost { value } => measured <= value,
        }
    }

    fn render(self, unit: Unit) -> String {
        match self {
            Target::RatioAtLeast { ratio } => format!("ratio >= {ratio:.2}"),
            Target::RatioAtMost { ratio } => format!("ratio <= {ratio:.2}"),
            Target::AtLeast { value } => format!(">= {}", Value::new(value, unit).render()),
            Target::AtMost { value } => format!("<= {}", Value::new(value, unit).render()),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Issue row number and letter, e.g. `2` or `5b`.
    pub id: String,
    pub figure: String,
    pub measured: Value,
    /// What the baseline is, in a few words.
    pub baseline_name: String,
    pub baseline: Value,
    /// measured / baseline.
    pub ratio: f64,
    pub target: Option<Target>,
    /// `None` when the row has no target.
    pub met: Option<bool>,
    /// Measurement details for the JSON (and the doc): counts, breakdowns.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Row {
    pub fn new(
        id: impl Into<String>,
        figure: impl Into<String>,
        measured: Value,
        baseline_name: impl Into<String>,
        baseline: Value,
        target: Option<Target>,
    ) -> Row {
        let ratio = if baseline.value == 0.0 {
            f64::NAN
        } else {
            measured.value / baseline.value
        };
        Row {
            id: id.into(),
            figure: figure.into(),
            measured,
            baseline_name: baseline_name.into(),
            baseline,
            ratio,
            met: target.map(|target| target.met(measured.value, ratio)),
            target,
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Row {
        self.details = details;
        self
    }
}

/// The whole run: what it ran on, with which sizes, and the rows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub environment: serde_json::Value,
    pub rows: Vec<Row>,
    pub elapsed_seconds: f64,
}

impl Report {
    /// The table, as printed: fixed columns, one line per row.
    pub fn render(&self) -> String {
        let header = [
            "#", "figure", "measured", "baseline", "ratio", "target", "met",
        ];
        let lines: Vec<[String; 7]> = self
            .rows
            .iter()
            .map(|row| {
                [
                    row.id.clone(),
                    row.figure.clone(),
                    row.measured.render(),
                    format!("{}: {}", row.baseline_name, row.baseline.render()),
                    format!("{:.3}", row.ratio),
                    row.target
                        .map_or_else(|| "-".to_owned(), |t| t.render(row.measured.unit)),
                    match row.met {
                        Some(true) => "yes".to_owned(),
                        Some(false) => "NO".to_owned(),
                        None => "-".to_owned(),
                    },
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = format!("{}\n", self.title);
        let mut push = |cells: &[String]| {
            let mut line = String::new();
            for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
                // Numbers read best right-aligned; words left-aligned.
                if matches!(index, 2 | 4) {
                    let _ = write!(line, "{cell:>width$}  ");
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        };
        push(&header.map(str::to_owned));
        push(&widths.map(|width| "-".repeat(width)));
        for line in &lines {
            push(line);
        }
        out
    }
}

/// 1234567.8 -> "1,234,568".
fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let digits = format!("{:.0}", value.abs());
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < -0.5 {
        grouped.insert(0, '-');
    }
    grouped
}

/// The run with the median `key` (the upper median of an even count), and
/// every run's key in the order given: repeated runs on a shared machine
/// differ, and the median ignores one disturbed run either way.
pub fn median_by<T>(runs: Vec<T>, key: impl Fn(&T) -> f64) -> Option<(T, Vec<f64>)> {
    let keys: Vec<f64> = runs.iter().map(&key).collect();
    let mut runs = runs;
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = runs.len() / 2;
    runs.into_iter().nth(middle).map(|run| (run, keys))
}

/// The `fraction` quantile of `sorted` (ascending), nearest rank: the
/// smallest sample with at least that fraction of samples at or below it.
pub fn quantile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-12_345.0), "-12,345");
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&samples, 0.5), 50.0);
        assert_eq!(quantile(&samples, 0.99), 99.0);
        assert_eq!(quantile(&samples, 1.0), 100.0);
        assert_eq!(quantile(&samples, 0.0), 1.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn the_median_run_is_picked_by_key() {
        let (run, keys) = median_by(vec![(1, 30.0), (2, 10.0), (3, 20.0)], |r| r.1).unwrap();
        assert_eq!(run.0, 3);
        assert_eq!(keys, vec![30.0, 10.0, 20.0]);
        let (run, _) = median_by(vec![(1, 2.0), (2, 1.0)], |r| r.1).unwrap();
        assert_eq!(run.0, 1);
        assert!(median_by(Vec::<f64>::new(), |r| *r).is_none());
    }

    #[test]
    fn targets_judge_the_value_or_the_ratio() {
        let rate = Value::new(90.0, Unit::RecordsPerSecond);
        let base = Value::new(100.0, Unit::RecordsPerSecond);
        let row = Row::new(
            "1",
            "x",
            rate,
            "b",
            base,
            Some(Target::RatioAtLeast { ratio: 0.95 }),
        );
        assert_eq!(row.met, Some(false));
        assert!((row.ratio - 0.9).abs() < 1e-9);
        let row = Row::new(
            "4",
            "x",
            rate,
            "b",
            base,
            Some(Target::AtLeast { value: 80.0 }),
        );
        assert_eq!(row.met, Some(true));
        let row = Row::new("6", "x", rate, "b", base, None);
        assert_eq!(row.met, None);
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let report = Report {
            title: "t".to_owned(),
            environment: serde_json::Value::Null,
            rows: vec![Row::new(
                "3b",
                "latency p99",
                Value::new(180.3, Unit::Milliseconds),
                "input visible",
                Value::new(120.0, Unit::Milliseconds),
                Some(Target::AtMost { value: 150.0 }),
            )],
            elapsed_seconds: 1.0,
        };
        let table = report.render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[3].contains("180.3 ms"), "{table}");
        assert!(lines[3].contains("input visible: 120.0 ms"), "{table}");
        assert!(lines[3].contains("<= 150.0 ms"), "{table}");
        assert!(lines[3].ends_with("NO"), "{table}");
        assert_eq!(lines[1].find("figure"), lines[3].find("latency"));
    }
}
