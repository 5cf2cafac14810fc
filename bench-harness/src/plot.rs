//! An SVG latency-percentile plot: latency (log scale) against percentile (log scale
//! of 1/(1−q)), one curve per system.

use crate::report::SystemResult;
use crate::Scenario;
use std::fmt::Write as _;
use std::path::Path;

const W: f64 = 760.0;
const H: f64 = 440.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
const COLORS: [&str; 3] = ["#d62728", "#1f77b4", "#2ca02c"];

pub fn write_svg(path: &Path, sc: Scenario, results: &[SystemResult]) -> std::io::Result<()> {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = results
        .iter()
        .filter_map(|r| {
            let h = r.merged_hist()?;
            let pts = (0..=400)
                .map(|i| {
                    // x = log10(1/(1-q)) from 0 (p0) to 5 (p99.999).
                    let x = i as f64 * 5.0 / 400.0;
                    let q = 1.0 - 10f64.powf(-x);
                    (x, h.value_at_quantile(q).max(1) as f64)
                })
                .collect();
            Some((r.system.name(), pts))
        })
        .collect();
    if curves.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} has no latencies to plot", sc.name()),
        ));
    }
    let ymax = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max);
    let ytop = ymax.log10().ceil().max(1.0);
    let px = |x: f64| L + x / 5.0 * (W - L - R);
    let py = |y: f64| T + (1.0 - y.log10() / ytop) * (H - T - B);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{} latency by percentile (log scales)</text>"#,
        W / 2.0,
        sc.name()
    );
    for (i, label) in ["0", "90", "99", "99.9", "99.99", "99.999"]
        .iter()
        .enumerate()
    {
        let x = px(i as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{T}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            H - B,
            H - B + 16.0
        );
    }
    for d in 0..=(ytop as i32) {
        let y = py(10f64.powi(d));
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            10u64.pow(d as u32)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (µs)</text>"#,
        (L + W - R) / 2.0,
        H - 12.0,
        H / 2.0,
        H / 2.0
    );
    for (i, (name, pts)) in curves.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let d: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            d.join(" ")
        );
        let ly = T + 14.0 + i as f64 * 16.0;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{c}"/><text x="{}" y="{}">{name}</text>"#,
            L + 10.0,
            ly - 4.0,
            L + 28.0,
            ly
        );
    }
    s.push_str("</svg>\n");
    std::fs::write(path, s)
}
