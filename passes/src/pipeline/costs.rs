//! What each part of a graph costs one rank: forward time under a [`CostModel`], weight bytes and
//! activation bytes, per [`Scope`] (embedding, each layer, head). The partitioner balances these.

use crate::cost::CostModel;
use moe_ir::{Graph, Op, Scope};
use std::collections::BTreeMap;

/// One scope's cost on one rank, per micro-batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScopeCost {
    /// Forward seconds of its ops (transfers between stages excluded).
    pub seconds: f64,
    /// Local bytes of its weights (at full size).
    pub weight_bytes: f64,
    /// Local bytes of the values its ops produce, routed buffers at their expected fill: what a
    /// training step keeps for the backward (an upper bound: recomputation or freeing would keep
    /// less).
    pub activation_bytes: f64,
    /// Local bytes of the values it reads from other scopes (what a stage keeps per micro-batch
    /// when it recomputes its activations in the backward).
    pub input_bytes: f64,
}

impl ScopeCost {
    /// What a micro-batch leaves on the device from its forward to its backward.
    pub fn kept_bytes(&self, recompute: bool) -> f64 {
        if recompute {
            self.input_bytes
        } else {
            self.activation_bytes
        }
    }
}

impl std::ops::AddAssign for ScopeCost {
    fn add_assign(&mut self, o: ScopeCost) {
        self.seconds += o.seconds;
        self.weight_bytes += o.weight_bytes;
        self.activation_bytes += o.activation_bytes;
        self.input_bytes += o.input_bytes;
    }
}

/// The cost of every scope of `g` (the expected fill of routed buffers propagated as extraction
/// does, see [`crate::cost::model`]).
pub fn scope_costs(g: &Graph, model: &dyn CostModel) -> BTreeMap<Scope, ScopeCost> {
    let mut fills: Vec<Vec<f64>> = Vec::with_capacity(g.len());
    let mut out: BTreeMap<Scope, ScopeCost> = BTreeMap::new();
    let mut read_in: std::collections::HashSet<(Scope, moe_ir::Value)> = Default::default();
    for (_, n) in g.nodes() {
        for &v in &n.inputs {
            let p = g.node(v.node);
            let leaf = matches!(p.op, Op::Weight(_) | Op::Input(_) | Op::Zeros(_));
            // A value from another layer, or received from another stage.
            let outside = p.scope != n.scope || matches!(p.op, Op::Recv { .. });
            if !leaf && outside && read_in.insert((n.scope, v)) {
                if let Some(t) = g.value_type(v) {
                    out.entry(n.scope).or_default().input_bytes += t.local_bytes(&g.mesh) as f64;
                }
            }
        }
        let tys: Vec<_> = n.inputs.iter().filter_map(|v| g.value_type(*v)).collect();
        let fill: Vec<f64> = n
            .inputs
            .iter()
            .map(|v| {
                fills
                    .get(v.node.index())
                    .and_then(|f| f.get(v.output as usize))
                    .copied()
                    .unwrap_or(1.0)
            })
            .collect();
        let out_fill = model.output_fill(&n.op, &tys, &fill, &n.outputs, &g.mesh);
        let c = out.entry(n.scope).or_default();
        // Routed buffers hold their expected rows (a dropless runtime sizes them by the counts).
        let bytes: f64 = n
            .outputs
            .iter()
            .enumerate()
            .map(|(k, t)| t.local_bytes(&g.mesh) as f64 * out_fill.get(k).copied().unwrap_or(1.0))
            .sum();
        fills.push(out_fill);
        match n.op {
            Op::Weight(_) => c.weight_bytes += bytes,
            Op::Input(_) | Op::Send { .. } | Op::Recv { .. } => {}
            _ => {
                let t = model.op_time(&n.op, &tys, &fill, &n.outputs, &g.mesh);
                c.seconds += if t.is_finite() { t.max(0.0) } else { 0.0 };
                c.activation_bytes += bytes;
            }
        }
    }
    out
}

/// The per-layer view the partitioner works on: `layers[i]` is layer `i`; the embedding runs with
/// the first stage and the head with the last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerCosts {
    pub embed: ScopeCost,
    pub layers: Vec<ScopeCost>,
    pub head: ScopeCost,
}

impl LayerCosts {
    /// Groups [`scope_costs`] by layer (layers without nodes cost nothing).
    pub fn of(g: &Graph, model: &dyn CostModel) -> LayerCosts {
        let mut lc = LayerCosts::default();
        for (scope, c) in scope_costs(g, model) {
            match scope {
                Scope::Embed => lc.embed += c,
                Scope::Head => lc.head += c,
                Scope::Layer(l) => {
                    let l = l as usize;
                    if lc.layers.len() <= l {
                        lc.layers.resize(l + 1, ScopeCost::default());
                    }
                    lc.layers[l] += c;
                }
            }
        }
        lc
    }

    /// The cost of layers `a..b` as virtual stage `v` of `vstages` (with the embedding on the
    /// first and the head on the last).
    pub fn range(&self, a: usize, b: usize, v: usize, vstages: usize) -> ScopeCost {
        let mut c = ScopeCost::default();
        for l in &self.layers[a..b] {
            c += *l;
        }
        if v == 0 {
            c += self.embed;
        }
        if v + 1 == vstages {
            c += self.head;
        }
        c
    }
}
