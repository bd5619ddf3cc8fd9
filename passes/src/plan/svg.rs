//! The plan's plot: best predicted tokens per second against node count, one line per dispatch
//! family, as a hand-written SVG (axes with units, ticks, a legend).

use super::{Family, Report};
use std::fmt::Write as _;

const W: f64 = 640.0;
const H: f64 = 400.0;
/// Margins: left, right, top, bottom.
const L: f64 = 80.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 60.0;

/// The SVG text for `report` (`title` on top).
pub fn plot_svg(report: &Report, title: &str) -> String {
    let mut nodes: Vec<u64> = report.plans.iter().map(|p| p.nodes).collect();
    nodes.extend(report.rejected.iter().map(|r| r.nodes));
    nodes.sort_unstable();
    nodes.dedup();
    let families = [
        (Family::Ppmoe, "#1f77b4"),
        (Family::AllToAll, "#d62728"),
        (Family::Dense, "#2ca02c"),
    ];
    let series: Vec<(Family, &str, Vec<(u64, f64)>)> = families
        .iter()
        .map(|&(f, color)| {
            let pts = nodes
                .iter()
                .filter_map(|&n| report.best(f, n).map(|p| (n, p.tokens_per_s)))
                .collect();
            (f, color, pts)
        })
        .collect();
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1.0);
    let (ytop, ystep) = nice(ymax);
    let n_max = nodes.last().copied().unwrap_or(1).max(1);
    // Node counts are powers of two: a log2 x axis.
    let lx = |n: u64| (n.max(1) as f64).log2();
    let xspan = lx(n_max).max(1.0);
    let x = |n: u64| L + (W - L - R) * lx(n) / xspan;
    let y = |v: f64| H - B - (H - T - B) * v / ytop;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    // Axes.
    let _ = writeln!(
        s,
        r#"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="black"/>"#,
        H - B,
        W - R,
        H - B,
        H - B
    );
    let mut v = 0.0;
    while v <= ytop * 1.0001 {
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(v),
            W - R,
            L - 6.0,
            y(v) + 4.0,
            si(v)
        );
        v += ystep;
    }
    for &n in &nodes {
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="black"/><text x="{0:.1}" y="{3}" text-anchor="middle">{n}</text>"#,
            x(n),
            H - B,
            H - B + 5.0,
            H - B + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">nodes (GPUs per node fixed; log scale)</text>"#,
        (L + W - R) / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">predicted throughput (tokens/s, best layout)</text>"#,
        (T + H - B) / 2.0
    );
    for (i, (f, color, pts)) in series.iter().enumerate() {
        if !pts.is_empty() {
            let path: Vec<String> = pts
                .iter()
                .map(|&(n, v)| format!("{:.1},{:.1}", x(n), y(v)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            for &(n, v) in pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    x(n),
                    y(v)
                );
            }
        }
        let ly = T + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{2}" y="{3}">{4}{5}</text>"#,
            L + 15.0,
            L + 40.0,
            L + 46.0,
            ly + 4.0,
            f.name(),
            if pts.is_empty() {
                " (no layout fits)"
            } else {
                ""
            }
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A rounded top and tick step for values up to `max`.
fn nice(max: f64) -> (f64, f64) {
    let mag = 10f64.powf(max.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|st| max / st <= 6.0)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// `1.5M`, `200k`.
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
