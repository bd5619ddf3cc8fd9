//! Cutting one graph weight out of a fused checkpoint tensor that holds several (all row-major):
//! DBRX's per-layer expert tensors and `Wqkv`, GPT-OSS's and Llama 4's `gate_up_proj`, and row
//! blocks of `[out, in]` linear weights (DeepSeek's MLA projections, whose block sizes
//! [`super::mla`] works out). Every cut checks the stored shape against the one the graph weight
//! implies and says why it does not fit.

use super::checkpoint::Stored;
use crate::error::SplitError;

/// Where a graph weight lies in a fused tensor. `E` experts, graph shapes `[E, in, out]` for
/// experts and `[in, out]` for linear weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// `[E * out, in]`: expert `e`'s `[out, in]` rows, each transposed (DBRX `w1`, `v1`).
    ExpertRowsT,
    /// `[E * in, out]`: expert `e`'s `[in, out]` rows as they are (DBRX `w2`).
    ExpertRows,
    /// `[E, in, 2 * out]`: the first (`0`) or second (`1`) half of the last dim (Llama 4's
    /// `gate_up_proj`: gate, then up).
    Half(usize),
    /// `[E, 2 * out, in]`: the first (`0`) or second (`1`) half of each expert's rows,
    /// transposed (transformers 5's `gate_up_proj`: gate rows, then up rows).
    HalfRowsT(usize),
    /// `[E, out, in]`: each expert's matrix transposed (transformers 5's `down_proj`).
    ExpertsT,
    /// `[E, in, 2 * out]`: the even (`0`) or odd (`1`) columns of the last dim (GPT-OSS's
    /// `gate_up_proj`: gate even, up odd).
    Interleaved(usize),
    /// `[q + 2 * kv, in]` with `q = in` (DBRX's `Wqkv`, the query as wide as the model): the
    /// query (`0`), key (`1`) or value (`2`) rows, transposed.
    Qkv(usize),
    /// `[n, in]` with `n = rows`: rows `start..start + len`, transposed.
    RowsT {
        rows: usize,
        start: usize,
        len: usize,
    },
    /// `[heads * group, in]`: rows `start..start + len` of every group of `group` rows,
    /// transposed to `[in, heads * len]` (DeepSeek's `kv_b_proj`: per head, the key then the value
    /// rows).
    HeadRowsT {
        heads: usize,
        group: usize,
        start: usize,
        len: usize,
    },
}

/// The fused tensor of shape `found` is not the layout `what` describes.
fn needs(what: &str, found: &[usize]) -> SplitError {
    SplitError::Layout {
        found: found.to_vec(),
        needs: what.to_string(),
    }
}

fn rank(g: &[usize]) -> SplitError {
    SplitError::GraphRank { rank: g.len() }
}

/// The graph weight of `shape` cut out of `t` as `cut` says.
pub(crate) fn apply(cut: &Cut, t: &Stored, shape: &[u64]) -> Result<Vec<f32>, SplitError> {
    let g: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let s = t.shape.as_slice();
    match *cut {
        Cut::ExpertRowsT | Cut::ExpertRows => {
            let [e, i, o] = g[..] else {
                return Err(rank(&g));
            };
            let (want, transposed) = match cut {
                Cut::ExpertRowsT => ([e * o, i], true),
                _ => ([e * i, o], false),
            };
            if s != want {
                return Err(needs(
                    &format!("{e} experts stacked by rows need {want:?}"),
                    s,
                ));
            }
            if !transposed {
                return Ok(t.data.clone());
            }
            let mut out = Vec::with_capacity(t.data.len());
            for x in 0..e {
                let block = &t.data[x * o * i..(x + 1) * o * i];
                out.extend(transpose(block, o, i));
            }
            Ok(out)
        }
        Cut::Half(part) | Cut::Interleaved(part) => {
            // Biases `[E, F]` of `[E, 2F]` cut like weights with one input row.
            let (e, i, o, want) = match g[..] {
                [e, i, o] => (e, i, o, vec![e, i, 2 * o]),
                [e, o] => (e, 1, o, vec![e, 2 * o]),
                _ => return Err(rank(&g)),
            };
            if s != want {
                return Err(needs(&format!("two fused projections need {want:?}"), s));
            }
            if o == 0 {
                return Ok(Vec::new());
            }
            let col = |j: usize| match cut {
                Cut::Half(_) => part * o + j,
                _ => 2 * j + part,
            };
            let mut out = Vec::with_capacity(e * i * o);
            for row in t.data.chunks_exact(2 * o) {
                out.extend((0..o).map(|j| row[col(j)]));
            }
            Ok(out)
        }
        Cut::HalfRowsT(_) | Cut::ExpertsT => {
            let [e, i, o] = g[..] else {
                return Err(rank(&g));
            };
            let (rows, start) = match *cut {
                Cut::HalfRowsT(part) => (2 * o, part * o),
                _ => (o, 0),
            };
            let want = [e, rows, i];
            if s != want {
                return Err(needs(
                    &format!("{e} experts of [{rows}, {i}] need {want:?}"),
                    s,
                ));
            }
            let mut out = Vec::with_capacity(e * i * o);
            for x in 0..e {
                let block = &t.data[x * rows * i..(x + 1) * rows * i];
                out.extend(rows_t(block, i, start, o));
            }
            Ok(out)
        }
        Cut::Qkv(part) => {
            let (&[n, q], &[i, w]) = (s, &g[..]) else {
                return Err(needs("a fused qkv projection is 2-d", s));
            };
            let kv = n
                .checked_sub(q)
                .filter(|r| r % 2 == 0 && *r > 0)
                .map(|r| r / 2)
                .ok_or_else(|| {
                    needs(
                        &format!("the query ({q} rows, as wide as the model) plus two equal key and value blocks need an even number of rows beyond {q}"),
                        s,
                    )
                })?;
            let (start, len) = [(0, q), (q, kv), (q + kv, kv)][part.min(2)];
            if (i, w) != (q, len) {
                return Err(needs(
                    &format!(
                        "its {} block is [{len}, {q}], the graph weight is [{i}, {w}]",
                        ["query", "key", "value"][part.min(2)]
                    ),
                    s,
                ));
            }
            Ok(rows_t(&t.data, q, start, len))
        }
        Cut::RowsT { rows, start, len } => {
            let [i, w] = g[..] else {
                return Err(rank(&g));
            };
            if s != [rows, i] || w != len || start + len > rows {
                return Err(needs(
                    &format!(
                        "rows {start}..{} of [{rows}, {i}] are the graph weight",
                        start + len
                    ),
                    s,
                ));
            }
            Ok(rows_t(&t.data, i, start, len))
        }
        Cut::HeadRowsT {
            heads,
            group,
            start,
            len,
        } => {
            let [i, w] = g[..] else {
                return Err(rank(&g));
            };
            if s != [heads * group, i] || w != heads * len || start + len > group {
                return Err(needs(
                    &format!(
                        "{heads} heads of {group} rows, rows {start}..{} of each, are the graph weight [{i}, {w}]",
                        start + len
                    ),
                    s,
                ));
            }
            let mut out = vec![0.0; i * w];
            for h in 0..heads {
                for j in 0..len {
                    let src = &t.data[(h * group + start + j) * i..][..i];
                    for (c, &v) in src.iter().enumerate() {
                        out[c * w + h * len + j] = v;
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Rows `start..start + len` of a `[_, cols]` matrix, transposed to `[cols, len]`.
fn rows_t(data: &[f32], cols: usize, start: usize, len: usize) -> Vec<f32> {
    transpose(&data[start * cols..(start + len) * cols], len, cols)
}

/// `[rows, cols]` row-major -> `[cols, rows]`.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stored(shape: &[usize]) -> Stored {
        let n = shape.iter().product::<usize>();
        Stored {
            shape: shape.to_vec(),
            data: (0..n).map(|v| v as f32).collect(),
        }
    }

    #[test]
    fn expert_rows() {
        // 2 experts, in 2, out 3: w1 [6, 2] rows e*3..e*3+3 hold expert e's [3, 2].
        let t = stored(&[6, 2]);
        let g = apply(&Cut::ExpertRowsT, &t, &[2, 2, 3]).unwrap();
        assert_eq!(g, [0., 2., 4., 1., 3., 5., 6., 8., 10., 7., 9., 11.]);
        // w2 [E * in, out] is the graph's [E, in, out] as it is.
        let t = stored(&[6, 2]);
        let g = apply(&Cut::ExpertRows, &t, &[2, 3, 2]).unwrap();
        assert_eq!(g, t.data);
        let e = apply(&Cut::ExpertRowsT, &stored(&[5, 2]), &[2, 2, 3])
            .unwrap_err()
            .to_string();
        assert!(e.contains("[5, 2]") && e.contains("[6, 2]"), "{e}");
    }

    #[test]
    fn halves_and_interleaved_columns() {
        // 1 expert, in 2, out 2: rows [0 1 2 3], [4 5 6 7].
        let t = stored(&[1, 2, 4]);
        assert_eq!(
            apply(&Cut::Half(0), &t, &[1, 2, 2]).unwrap(),
            [0., 1., 4., 5.]
        );
        assert_eq!(
            apply(&Cut::Half(1), &t, &[1, 2, 2]).unwrap(),
            [2., 3., 6., 7.]
        );
        // Biases [E, 2F] -> [E, F].
        let b = stored(&[2, 4]);
        assert_eq!(
            apply(&Cut::Interleaved(1), &b, &[2, 2]).unwrap(),
            [1., 3., 5., 7.]
        );
        let even = apply(&Cut::Interleaved(0), &t, &[1, 2, 2]).unwrap();
        assert_eq!(even, [0., 2., 4., 6.]);
        let odd = apply(&Cut::Interleaved(1), &t, &[1, 2, 2]).unwrap();
        assert_eq!(odd, [1., 3., 5., 7.]);
        assert!(apply(&Cut::Half(0), &t, &[1, 2, 3]).is_err());
        // Empty projections are empty, not a division by zero.
        let empty = stored(&[1, 2, 0]);
        assert!(apply(&Cut::Interleaved(1), &empty, &[1, 2, 0])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn transformers5_expert_rows() {
        // 1 expert, in 2, out 1: gate_up [1, 2, 2] rows g = (0, 1), u = (2, 3).
        let t = stored(&[1, 2, 2]);
        assert_eq!(apply(&Cut::HalfRowsT(0), &t, &[1, 2, 1]).unwrap(), [0., 1.]);
        assert_eq!(apply(&Cut::HalfRowsT(1), &t, &[1, 2, 1]).unwrap(), [2., 3.]);
        // down [E, H, F] = [1, 3, 2] -> graph [1, 2, 3].
        let t = stored(&[1, 3, 2]);
        let d = apply(&Cut::ExpertsT, &t, &[1, 2, 3]).unwrap();
        assert_eq!(d, [0., 2., 4., 1., 3., 5.]);
        assert!(apply(&Cut::ExpertsT, &t, &[1, 3, 2]).is_err());
    }

    #[test]
    fn qkv_rows() {
        // Model width 2, kv width 1: Wqkv [4, 2] rows q0 q1 k v.
        let t = stored(&[4, 2]);
        assert_eq!(apply(&Cut::Qkv(0), &t, &[2, 2]).unwrap(), [0., 2., 1., 3.]);
        assert_eq!(apply(&Cut::Qkv(1), &t, &[2, 1]).unwrap(), [4., 5.]);
        assert_eq!(apply(&Cut::Qkv(2), &t, &[2, 1]).unwrap(), [6., 7.]);
        // An odd number of rows beyond the query cannot hold two equal blocks.
        let e = apply(&Cut::Qkv(1), &stored(&[5, 2]), &[2, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("even"), "{e}");
        // The key block is 1 wide, the graph asks for 2.
        assert!(apply(&Cut::Qkv(1), &t, &[2, 2]).is_err());
    }

    #[test]
    fn row_blocks() {
        // [3, 2]: rows r0 = (0, 1), r1 = (2, 3), r2 = (4, 5).
        let t = stored(&[3, 2]);
        let cut = Cut::RowsT {
            rows: 3,
            start: 1,
            len: 2,
        };
        assert_eq!(apply(&cut, &t, &[2, 2]).unwrap(), [2., 4., 3., 5.]);
        let wrong = Cut::RowsT {
            rows: 4,
            start: 1,
            len: 2,
        };
        assert!(apply(&wrong, &t, &[2, 2]).is_err());
        // 2 heads of 3 rows (2 key rows, 1 value row) over in = 1: [k00 k01 v0 k10 k11 v1].
        let t = stored(&[6, 1]);
        let k = Cut::HeadRowsT {
            heads: 2,
            group: 3,
            start: 0,
            len: 2,
        };
        assert_eq!(apply(&k, &t, &[1, 4]).unwrap(), [0., 1., 3., 4.]);
        let v = Cut::HeadRowsT {
            heads: 2,
            group: 3,
            start: 2,
            len: 1,
        };
        assert_eq!(apply(&v, &t, &[1, 2]).unwrap(), [2., 5.]);
        assert!(apply(&v, &t, &[1, 3]).is_err());
    }
}
