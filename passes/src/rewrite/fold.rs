//! Identical layers, reported once: `rewrite --explain` on a 61-layer model prints one entry per
//! distinct [`LayerReport`] with the layers it stands for, instead of 61 copies.

use super::layers::LayerReport;
use std::fmt;

/// Layers whose reports say the same ([`LayerReport::same_as`]), with that report.
#[derive(Debug, Clone)]
pub struct LayerGroup<'a> {
    /// The layers, ascending.
    pub layers: Vec<u32>,
    /// The first layer's report (the others equal it but for layer and node names).
    pub report: &'a LayerReport,
}

/// Groups `reports` by [`LayerReport::same_as`], in order of each group's first layer. A layer
/// joins the earliest group it matches, so non-adjacent identical layers fold too (the MoE layers
/// of Llama 4, every other layer).
pub fn fold(reports: &[LayerReport]) -> Vec<LayerGroup<'_>> {
    let mut groups: Vec<LayerGroup<'_>> = Vec::new();
    for r in reports {
        match groups.iter_mut().find(|g| g.report.same_as(r)) {
            Some(g) => g.layers.push(r.layer),
            None => groups.push(LayerGroup {
                layers: vec![r.layer],
                report: r,
            }),
        }
    }
    groups
}

/// Layer numbers as runs: `0`, `1-31`, `1-47 step 2`, `0, 2, 7`.
pub fn ranges(layers: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        // The longest run from i with one step.
        let mut j = i + 1;
        if j < layers.len() {
            let step = layers[j].wrapping_sub(layers[i]);
            while j + 1 < layers.len() && layers[j + 1].wrapping_sub(layers[j]) == step {
                j += 1;
            }
            let len = j - i + 1;
            if len >= 3 || (len == 2 && step == 1) {
                parts.push(if step == 1 {
                    format!("{}-{}", layers[i], layers[j])
                } else {
                    format!("{}-{} step {step}", layers[i], layers[j])
                });
                i = j + 1;
                continue;
            }
        }
        parts.push(layers[i].to_string());
        i += 1;
    }
    parts.join(", ")
}

impl fmt::Display for LayerGroup<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.report;
        match self.layers.as_slice() {
            [one] => writeln!(
                f,
                "layer {one} ({}, experts on {}): {}",
                r.node,
                r.axis,
                r.chosen.name()
            )?,
            many => writeln!(
                f,
                "layers {} ({} identical layers, experts on {}): {}",
                ranges(many),
                many.len(),
                r.axis,
                r.chosen.name()
            )?,
        }
        r.write_body(f)
    }
}

/// The folded reports as text, one entry per group. A group that differs from a later one only
/// by the same extra compute on every form (the first MoE layer pays for a value the later ones
/// reuse: the e-graph prices a shared value once) says so.
pub fn folded_text(reports: &[LayerReport]) -> String {
    let groups = fold(reports);
    let mut out = String::new();
    for (i, g) in groups.iter().enumerate() {
        out.push_str(&g.to_string());
        if let Some((d, h)) = groups[i + 1..]
            .iter()
            .find_map(|h| shared_extra(g.report, h.report).map(|d| (d, h)))
        {
            out.push_str(&format!(
                "  shared: {:.3} ms of compute here (in the forms that use it) makes a value that layers {} reuse; the e-graph prices a shared value once, where it is first used\n",
                d * 1e3,
                ranges(&h.layers)
            ));
        }
    }
    out
}

/// `Some(d)` when `a` is `b` with `d > 0` more seconds of compute on some forms (the same `d`
/// on each), all else equal.
fn shared_extra(a: &LayerReport, b: &LayerReport) -> Option<f64> {
    if a.chosen != b.chosen || a.axis != b.axis || a.costs.len() != b.costs.len() {
        return None;
    }
    let ns = |s: f64| (s * 1e9).round() as i64;
    let mut d = None;
    for (x, y) in a.costs.iter().zip(&b.costs) {
        let diff = ns(x.split.compute) - ns(y.split.compute);
        if x.form != y.form
            || ns(x.split.comm) != ns(y.split.comm)
            || x.split.comm_bytes.round() != y.split.comm_bytes.round()
        {
            return None;
        }
        if diff.abs() <= 1 {
            continue;
        }
        match d {
            None => d = Some(diff),
            // Within a nanosecond of rounding.
            Some(e) if (e - diff).abs() <= 1 => {}
            Some(_) => return None,
        }
    }
    d.filter(|&d| d > 0).map(|d| d as f64 * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn ranges_read_as_runs() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[0]), "0");
        assert_eq!(ranges(&[1, 2]), "1-2");
        assert_eq!(ranges(&[1, 3]), "1, 3");
        assert_eq!(ranges(&(1..32).collect::<Vec<_>>()), "1-31");
        assert_eq!(ranges(&[1, 3, 5, 7, 47]), "1-7 step 2, 47");
        assert_eq!(ranges(&[0, 2, 7]), "0, 2, 7");
        assert_eq!(ranges(&[0, 1, 2, 5, 9, 13]), "0-2, 5-13 step 4");
    }
}
