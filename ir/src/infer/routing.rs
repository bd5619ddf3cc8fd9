//! Typing rules of routing: router, dispatch/combine, local routes, index ops, expert FFNs.

use super::*;
use crate::limits;
use crate::op::{Activation, Capacity, FfnLayout, RouterAttrs};

pub(super) fn router(a: &RouterAttrs, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    arity(inputs, if a.select_bias { 2 } else { 1 })?;
    rank(inputs, 0, 2)?;
    float(inputs, 0)?;
    not_partial(inputs, 0)?;
    unsplit(inputs, 0, 1, "the expert dim of the logits")?;
    expect_dim(inputs, 0, 1, a.experts, "router logits")?;
    if a.k == 0 || a.k > a.experts {
        return Err(TypeError::Attr(format!(
            "k = {} must be in 1..={} (the experts)",
            a.k, a.experts
        )));
    }
    if !a.scale.0.is_finite() {
        return Err(TypeError::Attr(format!(
            "scale = {} must be finite",
            a.scale
        )));
    }
    if let Some(g) = a.groups {
        if g.groups == 0
            || a.experts % g.groups != 0
            || g.topk_groups == 0
            || g.topk_groups > g.groups
        {
            return Err(TypeError::Attr(format!(
                "groups = {} must divide the {} experts and topk_groups = {} be in 1..=groups",
                g.groups, a.experts, g.topk_groups
            )));
        }
        if g.group_score == crate::GroupScore::Top2Sum && a.experts / g.groups < 2 {
            return Err(TypeError::Attr(
                "top2_sum group scores need at least 2 experts per group".into(),
            ));
        }
        if a.k > g.topk_groups * (a.experts / g.groups) {
            return Err(TypeError::Attr(format!(
                "k = {} exceeds the experts of the {} kept groups",
                a.k, g.topk_groups
            )));
        }
    }
    if a.select_bias {
        rank(inputs, 1, 1)?;
        float(inputs, 1)?;
        expect_dim(inputs, 1, 0, a.experts, "selection bias")?;
        replicated(inputs, 1, "the selection bias")?;
    }
    let t = inputs[0];
    let split = vec![t.split_of(0).to_vec(), vec![]];
    Ok(vec![
        make(DType::I32, vec![t.shape[0], a.k], split.clone(), vec![]),
        make(DType::F32, vec![t.shape[0], a.k], split, vec![]),
    ])
}

fn routes(inputs: &[&TensorType], idx: usize, tokens: usize) -> Result<()> {
    rank(inputs, idx, 2)?;
    int(inputs, idx)?;
    not_partial(inputs, idx)?;
    unsplit(inputs, idx, 1, "the choice dim")?;
    same_dim(inputs, (tokens, 0), (idx, 0), "token count")?;
    Ok(())
}

pub(super) fn dispatch(
    experts: u64,
    capacity: u64,
    inputs: &[&TensorType],
    mesh: &Mesh,
) -> Result<TensorType> {
    arity(inputs, 2)?;
    rank(inputs, 0, 2)?;
    float(inputs, 0)?;
    not_partial(inputs, 0)?;
    routes(inputs, 1, 0)?;
    if experts == 0 || capacity == 0 {
        return Err(TypeError::Attr(
            "experts and capacity must be positive".into(),
        ));
    }
    let tokens = same_split(inputs, (0, 0), (1, 0), "token dim")?;
    let x = inputs[0];
    Ok(make(
        x.dtype,
        vec![
            experts,
            limits::dim_product("capacity x token shards", capacity, mesh.product(&tokens))?,
            x.shape[1],
        ],
        vec![vec![], tokens, x.split_of(1).to_vec()],
        vec![],
    ))
}

pub(super) fn combine(
    experts: u64,
    capacity: u64,
    inputs: &[&TensorType],
    mesh: &Mesh,
) -> Result<TensorType> {
    arity(inputs, 3)?;
    rank(inputs, 0, 3)?;
    float(inputs, 0)?;
    not_partial(inputs, 0)?;
    routes(inputs, 1, 2)?;
    rank(inputs, 2, 2)?;
    float(inputs, 2)?;
    not_partial(inputs, 2)?;
    unsplit(inputs, 0, 0, "the expert dim of the expert outputs")?;
    let tokens = same_split(inputs, (0, 1), (1, 0), "capacity dim vs token dim")?;
    same_split(inputs, (1, 0), (2, 0), "token dim")?;
    expect_dim(inputs, 0, 0, experts, "experts")?;
    expect_dim(
        inputs,
        0,
        1,
        limits::dim_product("capacity x token shards", capacity, mesh.product(&tokens))?,
        "capacity slots of all token shards",
    )?;
    same_dim(inputs, (1, 1), (2, 1), "choices")?;
    let y = inputs[0];
    Ok(make(
        y.dtype,
        vec![inputs[1].shape[0], y.shape[2]],
        vec![tokens, y.split_of(2).to_vec()],
        vec![],
    ))
}

/// Row bound per rank of `local_routes` (see [`crate::Op::LocalRoutes`]).
pub fn local_route_rows(
    local_tokens: u64,
    k: u64,
    local_experts: u64,
    capacity: Capacity,
    token_groups: u64,
) -> u64 {
    // Saturating: `local_routes` refuses a bound above the limits (see `crate::limits`).
    let dropless = local_tokens.saturating_mul(k.min(local_experts));
    match capacity {
        Capacity::Dropless => dropless,
        Capacity::Slots(c) => {
            dropless.min(local_experts.saturating_mul(c).saturating_mul(token_groups))
        }
    }
}

pub(super) fn local_routes(
    experts: u64,
    axis: &str,
    capacity: Capacity,
    token_groups: u64,
    inputs: &[&TensorType],
    mesh: &Mesh,
) -> Result<Vec<TensorType>> {
    arity(inputs, 2)?;
    let n = axis_exists(axis, mesh)?;
    routes(inputs, 0, 1)?;
    rank(inputs, 1, 2)?;
    float(inputs, 1)?;
    not_partial(inputs, 1)?;
    same_dim(inputs, (0, 1), (1, 1), "choices")?;
    let outer = same_split(inputs, (0, 0), (1, 0), "token dim")?;
    for (i, t) in inputs.iter().enumerate().take(2) {
        if !t.is_replicated_on(axis) {
            return Err(TypeError::Sharding(format!(
                "input {i} ({t}) must be replicated on `{axis}`: every rank routes the same tokens"
            )));
        }
    }
    if experts == 0 || experts % n != 0 {
        return Err(TypeError::Attr(format!(
            "{experts} experts cannot be split evenly over `{axis}` of {n} ranks"
        )));
    }
    if let Capacity::Slots(0) = capacity {
        return Err(TypeError::Attr("capacity slots must be positive".into()));
    }
    let outer_n = mesh.product(&outer);
    let local_tokens = inputs[0].shape[0] / outer_n;
    if token_groups == 0 || local_tokens % token_groups != 0 {
        return Err(TypeError::Attr(format!(
            "token_groups = {token_groups} must divide the {local_tokens} tokens of a rank"
        )));
    }
    let k = inputs[0].shape[1];
    let rows = local_route_rows(local_tokens, k, experts / n, capacity, token_groups);
    let mut split = outer.clone();
    split.push(axis.to_string());
    let ranks = outer_n * n;
    let all_rows = limits::dim_product("route rows x ranks", rows, ranks)?;
    let counts = limits::dim_product("experts x token shards", experts, outer_n)?;
    Ok(vec![
        make(DType::I32, vec![all_rows], vec![split.clone()], vec![]),
        make(DType::F32, vec![all_rows], vec![split.clone()], vec![]),
        make(DType::I32, vec![counts], vec![split], vec![]),
    ])
}

/// Checks that `rows`' split axes extend `table`'s dim-0 split axes, returning the extra axes
/// (axes the table is replicated on, across which each rank indexes its own rows).
fn row_axes(inputs: &[&TensorType], table: usize, ids: usize) -> Result<Vec<String>> {
    let (ts, is) = (inputs[table].split_of(0), inputs[ids].split_of(0));
    if !is.starts_with(ts) {
        return Err(TypeError::Sharding(format!(
            "the rows of input {table} are split on [{}], which must be a prefix of the split of the ids (input {ids}: [{}])",
            ts.join(","),
            is.join(",")
        )));
    }
    let extra = is[ts.len()..].to_vec();
    if let Some(a) = extra
        .iter()
        .find(|a| inputs[table].axes().any(|b| b == a.as_str()) && !inputs[table].is_partial_on(a))
    {
        return Err(TypeError::Sharding(format!(
            "input {table} must not be split on `{a}`"
        )));
    }
    Ok(extra)
}

pub(super) fn index_select(inputs: &[&TensorType]) -> Result<TensorType> {
    arity(inputs, 2)?;
    rank(inputs, 0, 2)?;
    rank(inputs, 1, 1)?;
    float(inputs, 0)?;
    int(inputs, 1)?;
    not_partial(inputs, 0)?;
    not_partial(inputs, 1)?;
    row_axes(inputs, 0, 1)?;
    let x = inputs[0];
    Ok(make(
        x.dtype,
        vec![inputs[1].shape[0], x.shape[1]],
        vec![inputs[1].split_of(0).to_vec(), x.split_of(1).to_vec()],
        vec![],
    ))
}

pub(super) fn index_add(scaled: bool, inputs: &[&TensorType]) -> Result<TensorType> {
    arity(inputs, if scaled { 4 } else { 3 })?;
    rank(inputs, 0, 2)?;
    rank(inputs, 1, 1)?;
    rank(inputs, 2, 2)?;
    float(inputs, 0)?;
    int(inputs, 1)?;
    same_dtype(inputs, 0, 2)?;
    not_partial(inputs, 1)?;
    not_partial(inputs, 2)?;
    same_dim(inputs, (1, 0), (2, 0), "rows")?;
    same_split(inputs, (1, 0), (2, 0), "rows")?;
    same_dim(inputs, (0, 1), (2, 1), "row width")?;
    same_split(inputs, (0, 1), (2, 1), "row width")?;
    if scaled {
        rank(inputs, 3, 1)?;
        float(inputs, 3)?;
        not_partial(inputs, 3)?;
        same_dim(inputs, (1, 0), (3, 0), "scale rows")?;
        same_split(inputs, (1, 0), (3, 0), "scale rows")?;
    }
    let extra = row_axes(inputs, 0, 1)?;
    if let Some(a) = extra.iter().find(|a| !inputs[0].is_partial_on(a)) {
        return Err(TypeError::Sharding(format!(
            "each rank adds its own rows along `{a}`, so the buffer ({}) must be partial on `{a}` (start from zeros partial on it)",
            inputs[0]
        )));
    }
    Ok(inputs[0].clone())
}

pub(super) fn expert_ffn(
    layout: FfnLayout,
    act: Activation,
    gated: bool,
    bias: bool,
    inputs: &[&TensorType],
) -> Result<TensorType> {
    let grouped = layout == FfnLayout::Grouped;
    let first_w = 1 + usize::from(grouped);
    let n = first_w + 2 + usize::from(gated);
    let biases = if bias { 2 + usize::from(gated) } else { 0 };
    arity(inputs, n + biases)?;
    // b_up[, b_gate] like the up projection's [E, F], b_down like the down projection's [E, H].
    for j in 0..biases {
        let (b, w, dim) = if j + 1 == biases {
            (n + j, n - 1, 2)
        } else {
            (n + j, first_w + j, 2)
        };
        rank(inputs, b, 2)?;
        same_dtype(inputs, 0, b)?;
        not_partial(inputs, b)?;
        same_dim(inputs, (w, 0), (b, 0), "experts")?;
        same_split(inputs, (w, 0), (b, 0), "experts")?;
        same_dim(inputs, (w, dim), (b, 1), "bias width")?;
        same_split(inputs, (w, dim), (b, 1), "bias width")?;
    }
    if act == Activation::OaiSwiglu && !gated {
        return Err(TypeError::Attr("oai_swiglu needs gated = true".into()));
    }
    let (up, down) = (first_w, n - 1);
    let x = inputs[0];
    rank(inputs, 0, if grouped { 2 } else { 3 })?;
    float(inputs, 0)?;
    not_partial(inputs, 0)?;
    let hdim = x.rank() - 1;
    unsplit(inputs, 0, hdim, "the hidden dim")?;
    for w in first_w..n {
        rank(inputs, w, 3)?;
        same_dtype(inputs, 0, w)?;
        not_partial(inputs, w)?;
        same_dim(inputs, (up, 0), (w, 0), "experts")?;
        same_split(inputs, (up, 0), (w, 0), "experts")?;
    }
    same_dim(inputs, (0, hdim), (up, 1), "hidden")?;
    same_dim(inputs, (0, hdim), (down, 2), "hidden")?;
    same_dim(inputs, (up, 2), (down, 1), "ffn width")?;
    unsplit(inputs, up, 1, "the hidden dim")?;
    unsplit(inputs, down, 2, "the hidden dim")?;
    let ffn_split = same_split(
        inputs,
        (up, 2),
        (down, 1),
        "ffn width (expert tensor parallelism)",
    )?;
    if gated {
        same_split(inputs, (up, 2), (up + 1, 2), "ffn width")?;
        unsplit(inputs, up + 1, 1, "the hidden dim")?;
    }
    let experts = inputs[up].shape[0];
    let wsplit = inputs[up].split_of(0).to_vec();
    if grouped {
        let c = 1;
        rank(inputs, c, 1)?;
        int(inputs, c)?;
        not_partial(inputs, c)?;
        let cs = inputs[c].split_of(0);
        if !cs.ends_with(&wsplit) {
            return Err(TypeError::Sharding(format!(
                "counts are split on [{}], which must end with the experts' split [{}]",
                cs.join(","),
                wsplit.join(",")
            )));
        }
        if inputs[c].shape[0] % experts != 0 {
            return Err(TypeError::Shape(format!(
                "counts has {} entries, not a multiple of the {experts} experts",
                inputs[c].shape[0]
            )));
        }
        same_split(inputs, (0, 0), (c, 0), "rows vs counts")?;
    } else {
        same_dim(inputs, (0, 0), (up, 0), "experts")?;
        same_split(inputs, (0, 0), (up, 0), "experts")?;
    }
    let mut out = x.clone();
    out.partial = ffn_split;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{infer, Capacity, DType, Mesh, Op, TensorType};

    fn mesh() -> Mesh {
        Mesh::parse("tp=4", 8).unwrap()
    }

    #[test]
    fn ppmoe_slicing_types_check_and_need_a_partial_buffer() {
        let m = mesh();
        let idx = TensorType::new(DType::I32, [64, 2]);
        let w = TensorType::new(DType::F32, [64, 2]);
        let op = Op::LocalRoutes {
            experts: 8,
            axis: "tp".into(),
            capacity: Capacity::Dropless,
            token_groups: 1,
        };
        let r = infer(&op, &[&idx, &w], &m).unwrap();
        // Each rank has 2 experts; a token may pick both: 64 * 2 rows per rank.
        assert_eq!(r[0].to_string(), "i32[512@tp]");
        assert_eq!(r[2].to_string(), "i32[8@tp]");
        let x = TensorType::new(DType::Bf16, [64, 16]);
        let xs = infer(&Op::IndexSelect, &[&x, &r[0]], &m).unwrap();
        assert_eq!(xs[0].to_string(), "bf16[512@tp, 16]");
        let zeros = TensorType::new(DType::Bf16, [64, 16]);
        let op = Op::IndexAdd { scaled: true };
        // A replicated buffer would be counted once per rank: refused.
        assert!(infer(&op, &[&zeros, &r[0], &xs[0], &r[1]], &m).is_err());
        let zp = zeros.with_partial(&["tp"]);
        let y = infer(&op, &[&zp, &r[0], &xs[0], &r[1]], &m).unwrap();
        assert_eq!(y[0].to_string(), "bf16[64, 16] partial(tp)");
        let y = infer(&Op::AllReduce { axis: "tp".into() }, &[&y[0]], &m).unwrap();
        assert!(y[0].is_replicated());
    }

    #[test]
    fn local_routes_needs_tokens_replicated_on_its_axis() {
        let m = mesh();
        let idx = TensorType::new(DType::I32, [64, 2]).with_split(0, &["tp"]);
        let w = TensorType::new(DType::F32, [64, 2]).with_split(0, &["tp"]);
        let op = Op::LocalRoutes {
            experts: 8,
            axis: "tp".into(),
            capacity: Capacity::Dropless,
            token_groups: 1,
        };
        assert!(infer(&op, &[&idx, &w], &m)
            .unwrap_err()
            .to_string()
            .contains("replicated on `tp`"));
    }

    #[test]
    fn capacity_bounds_rows() {
        let m = mesh();
        let idx = TensorType::new(DType::I32, [64, 2]);
        let w = TensorType::new(DType::F32, [64, 2]);
        let op = Op::LocalRoutes {
            experts: 8,
            axis: "tp".into(),
            capacity: Capacity::Slots(5),
            token_groups: 4,
        };
        // 2 local experts * 5 slots * 4 groups = 40 < 128.
        assert_eq!(
            infer(&op, &[&idx, &w], &m).unwrap()[0].to_string(),
            "i32[160@tp]"
        );
    }

    #[test]
    fn dispatch_and_combine_are_inverse_layouts() {
        let m = Mesh::parse("ep=4", 8).unwrap();
        let x = TensorType::new(DType::Bf16, [64, 16]).with_split(0, &["ep"]);
        let idx = TensorType::new(DType::I32, [64, 2]).with_split(0, &["ep"]);
        let w = TensorType::new(DType::F32, [64, 2]).with_split(0, &["ep"]);
        let d = infer(
            &Op::Dispatch {
                experts: 8,
                capacity: 6,
            },
            &[&x, &idx],
            &m,
        )
        .unwrap();
        assert_eq!(d[0].to_string(), "bf16[8, 24@ep, 16]");
        let y = infer(
            &Op::Combine {
                experts: 8,
                capacity: 6,
            },
            &[&d[0], &idx, &w],
            &m,
        )
        .unwrap();
        assert_eq!(y[0], x);
        // Capacity must agree.
        assert!(infer(
            &Op::Combine {
                experts: 8,
                capacity: 5
            },
            &[&d[0], &idx, &w],
            &m
        )
        .is_err());
    }
}
