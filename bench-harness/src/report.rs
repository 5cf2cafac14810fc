//! Medians, ratios and the two output formats (human tables, JSON lines).

use crate::scenarios::{new_hist, Outcome};
use crate::{Scenario, System};
use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// All runs of one system.
pub struct SystemResult {
    pub system: System,
    pub runs: Vec<Outcome>,
    /// idle's N (0 for other scenarios).
    pub n: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl SystemResult {
    pub fn new(system: System, runs: Vec<Outcome>, n: usize) -> Self {
        Self { system, runs, n }
    }

    fn values(&self, key: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|o| o.figures.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
            .collect()
    }

    fn keys(&self) -> Vec<&'static str> {
        self.runs
            .first()
            .map(|o| o.figures.iter().map(|(k, _)| *k).collect())
            .unwrap_or_default()
    }

    /// Median of every figure over the runs.
    pub fn medians(&self) -> Vec<(&'static str, f64)> {
        self.keys()
            .into_iter()
            .map(|k| (k, median(self.values(k))))
            .collect()
    }

    fn range(&self, key: &str) -> (f64, f64) {
        let v = self.values(key);
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    }

    /// All runs' latencies together.
    pub fn merged_hist(&self) -> Option<Histogram<u64>> {
        let mut h = new_hist();
        let mut any = false;
        for o in &self.runs {
            if let Some(x) = &o.hist {
                h.add(x).ok();
                any = true;
            }
        }
        any.then_some(h)
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn json_num(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        serde_json::Value::from(v as i64)
    } else {
        serde_json::Value::from((v * 1000.0).round() / 1000.0)
    }
}

/// One JSON object in the SCENARIOS.md format.
pub fn json_line(sys: System, sc: Scenario, figures: &[(&str, f64)], note: Option<&str>) -> String {
    let mut m = serde_json::Map::new();
    m.insert("system".into(), sys.name().into());
    m.insert("scenario".into(), sc.name().into());
    for (k, v) in figures {
        m.insert((*k).into(), json_num(*v));
    }
    if let Some(n) = note {
        // Only the idle child uses this, to pass the note to its parent.
        m.insert("note".into(), n.into());
    }
    serde_json::Value::Object(m).to_string()
}

/// Reads an idle child's JSON line back.
pub fn parse_child(s: &str) -> std::io::Result<Outcome> {
    let line = s.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| std::io::Error::other(format!("idle child printed {line:?}: {e}")))?;
    let mut figures = Vec::new();
    for k in ["streams", "bytes_per_stream", "open_s"] {
        let x = v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
        figures.push((k, x));
    }
    Ok(Outcome {
        figures,
        hist: None,
        note: v.get("note").and_then(|n| n.as_str()).map(String::from),
    })
}

/// The figure ratios are taken on, and whether higher is better.
fn primary(sc: Scenario) -> (&'static str, bool) {
    match sc {
        Scenario::Bulk | Scenario::Fanout => ("mb_per_s", true),
        Scenario::Open => ("streams_per_s", true),
        Scenario::Rpc | Scenario::Http | Scenario::Grpc => ("rps", true),
        Scenario::Idle => ("bytes_per_stream", false),
        Scenario::Hol => ("p99_ratio", false),
        Scenario::Relay => ("bulk_ratio", true),
        Scenario::Join => ("p50_us", false),
    }
}

/// The human report.
pub fn human(sc: Scenario, results: &[SystemResult], runs: usize, shards: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} — median of {runs} run(s) [min–max]; astranet: {shards} shard(s) per node",
        sc.name()
    );
    let mut ns: Vec<usize> = results.iter().map(|r| r.n).collect();
    ns.dedup();
    for n in ns {
        let group: Vec<&SystemResult> = results.iter().filter(|r| r.n == n).collect();
        if sc == Scenario::Idle {
            let _ = writeln!(out, "\nN = {n}");
        }
        let keys = group.first().map(|r| r.keys()).unwrap_or_default();
        let _ = write!(out, "{:<12}", "system");
        for k in &keys {
            let _ = write!(out, " {k:>26}");
        }
        let _ = writeln!(out);
        for r in &group {
            let _ = write!(out, "{:<12}", r.system.name());
            for (k, v) in r.medians() {
                let (lo, hi) = r.range(k);
                let cell = if r.runs.len() > 1 {
                    format!("{} [{}–{}]", fmt_num(v), fmt_num(lo), fmt_num(hi))
                } else {
                    fmt_num(v)
                };
                let _ = write!(out, " {cell:>26}");
            }
            let _ = writeln!(out);
        }
        let (key, higher) = primary(sc);
        let get = |s: System| {
            group
                .iter()
                .find(|r| r.system == s)
                .and_then(|r| r.medians().into_iter().find(|(k, _)| *k == key))
                .map(|(_, v)| v)
        };
        if let Some(a) = get(System::Astranet) {
            for base in [System::Tcp, System::TcpGlommio, System::YamuxRs] {
                if let Some(b) = get(base) {
                    let ratio = a / b;
                    let _ = writeln!(
                        out,
                        "astranet / {:<11} {key}: {:.2}x ({})",
                        base.name(),
                        ratio,
                        if higher {
                            "higher is better"
                        } else {
                            "lower is better"
                        }
                    );
                }
            }
        }
        // The shard-local API against plain TCP on the same runtime.
        if let (Some(a), Some(b)) = (get(System::AstranetLocal), get(System::TcpGlommio)) {
            let _ = writeln!(
                out,
                "astranet-local / tcp-glommio {key}: {:.2}x ({})",
                a / b,
                if higher {
                    "higher is better"
                } else {
                    "lower is better"
                }
            );
        }
        for r in &group {
            for o in &r.runs {
                if let Some(n) = &o.note {
                    let _ = writeln!(out, "note ({}): {n}", r.system.name());
                    break;
                }
            }
        }
        let hists: Vec<(System, Histogram<u64>)> = group
            .iter()
            .filter_map(|r| r.merged_hist().map(|h| (r.system, h)))
            .collect();
        if !hists.is_empty() {
            let _ = writeln!(
                out,
                "\nlatency (µs, all runs){}",
                if sc == Scenario::Hol {
                    ", beside bulk"
                } else {
                    ""
                }
            );
            let _ = writeln!(
                out,
                "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
                "system", "p50", "p90", "p99", "p99.9", "max", "samples"
            );
            for (s, h) in hists {
                let _ = writeln!(
                    out,
                    "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
                    s.name(),
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.9),
                    h.value_at_quantile(0.99),
                    h.value_at_quantile(0.999),
                    h.max(),
                    h.len()
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::hol_figures;

    #[test]
    fn hol_reports_bulk_alone_and_beside_under_the_scenarios_names() {
        let f = hol_figures(100.0, 250.0, 2000.0, 1500.0);
        let line = json_line(System::Astranet, Scenario::Hol, &f, None);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["scenario"], "hol");
        assert_eq!(v["p99_alone_us"], 100);
        assert_eq!(v["p99_beside_us"], 250);
        assert_eq!(v["p99_ratio"], 2.5);
        assert_eq!(v["bulk_alone_mb_per_s"], 2000);
        assert_eq!(v["bulk_beside_mb_per_s"], 1500);
    }

    #[test]
    fn idle_child_line_round_trips_open_s_and_note() {
        let f = [
            ("streams", 1000.0),
            ("bytes_per_stream", 312.5),
            ("open_s", 1.25),
        ];
        let line = json_line(System::TcpGlommio, Scenario::Idle, &f, Some("stopped"));
        assert!(line.contains("\"system\":\"tcp-glommio\""), "{line}");
        let o = parse_child(&format!("progress\n{line}")).unwrap();
        assert_eq!(
            o.figures,
            vec![
                ("streams", 1000.0),
                ("bytes_per_stream", 312.5),
                ("open_s", 1.25)
            ]
        );
        assert_eq!(o.note.as_deref(), Some("stopped"));
    }

    #[test]
    fn medians_take_the_middle_of_each_figure() {
        let run = |v: f64| Outcome {
            figures: vec![
                ("bulk_alone_mb_per_s", v),
                ("bulk_beside_mb_per_s", v / 2.0),
            ],
            hist: None,
            note: None,
        };
        let r = SystemResult::new(System::TcpGlommio, vec![run(3.0), run(1.0), run(2.0)], 0);
        assert_eq!(
            r.medians(),
            vec![("bulk_alone_mb_per_s", 2.0), ("bulk_beside_mb_per_s", 1.0)]
        );
        let table = human(Scenario::Hol, &[r], 3, 1);
        assert!(table.contains("tcp-glommio"), "{table}");
        assert!(table.contains("bulk_beside_mb_per_s"), "{table}");
    }
}
