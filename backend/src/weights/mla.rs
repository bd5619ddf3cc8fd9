//! DeepSeek's fused multi-head latent attention projections, as the graph splits them.
//!
//! `kv_a_proj_with_mqa.weight` is `[r + R, hidden]` (`r = kv_lora_rank`, `R = qk_rope_head_dim`):
//! the latent rows then the shared RoPE key's; the graph has `kv_a_proj` `[hidden, r]` and
//! `k_rope_proj` `[hidden, R]`. `kv_b_proj.weight` is `[heads * (nope + v), r]`, viewed per head
//! as `nope` key rows then `v` value rows (`.view(..., heads, nope + v)` in the modeling code);
//! the graph has `k_b_proj` `[r, heads * nope]` and `v_b_proj` `[r, heads * v]`.
//!
//! A fused tensor's shape does not say where its blocks end; the layer's other tensors do: `r` is
//! the length of `kv_a_layernorm.weight`; `R` is `k_rope_proj`'s width (or `kv_a_proj_with_mqa`'s
//! rows minus `r`); the query projection (`q_b_proj`, or `q_proj` without a query LoRA) is
//! `heads * (nope + R)` wide, so with the graph's `heads * nope` (or `heads * v`) the head count
//! follows. Those tensors are looked up under their Hugging Face keys and the graph's names.

use super::checkpoint::Checkpoint;
use super::fused::Cut;
use crate::error::SplitError;

/// Which graph weight of a fused MLA tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MlaPart {
    /// `kv_a_proj`: the latent rows of `kv_a_proj_with_mqa`.
    Latent,
    /// `k_rope_proj`: the shared RoPE key rows of `kv_a_proj_with_mqa`.
    RopeKey,
    /// `k_b_proj`: the key rows of each head of `kv_b_proj`.
    Key,
    /// `v_b_proj`: the value rows of each head of `kv_b_proj`.
    Value,
}

/// The layer a fused MLA tensor belongs to: its HF key prefix (`model.layers.3.`) and graph name
/// prefix (`l3.`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MlaLayer {
    pub hf: String,
    pub graph: String,
}

impl MlaLayer {
    /// Dim `dim` of the first of `(key, dim)` present in `c`, as `(key, size)`.
    fn probe(&self, c: &Checkpoint, at: &[(String, usize)]) -> Option<(String, usize)> {
        at.iter()
            .find_map(|(k, d)| Some((k.clone(), *c.shape(k)?.get(*d)?)))
    }

    fn keys(&self, tails: &[(&str, bool, usize)]) -> Vec<(String, usize)> {
        tails
            .iter()
            .map(|(t, hf, d)| {
                let p = if *hf { &self.hf } else { &self.graph };
                (format!("{p}self_attn.{t}"), *d)
            })
            .collect()
    }

    /// `kv_lora_rank`, from `kv_a_layernorm.weight`.
    fn latent(&self, c: &Checkpoint) -> Result<usize, SplitError> {
        let at = self.keys(&[
            ("kv_a_layernorm.weight", true, 0),
            ("kv_a_layernorm.weight", false, 0),
        ]);
        self.probe(c, &at)
            .map(|(_, n)| n)
            .ok_or_else(|| missing("the latent width", &at))
    }

    /// `qk_rope_head_dim` for a latent width `r`.
    fn rope(&self, c: &Checkpoint, r: usize) -> Result<usize, SplitError> {
        let graph = self.keys(&[("k_rope_proj.weight", false, 1)]);
        if let Some((_, n)) = self.probe(c, &graph) {
            return Ok(n);
        }
        let hf = self.keys(&[("kv_a_proj_with_mqa.weight", true, 0)]);
        match self.probe(c, &hf) {
            Some((_, n)) if n > r => Ok(n - r),
            Some((key, rows)) => Err(SplitError::RopeWidth {
                key,
                rows,
                latent: r,
            }),
            None => Err(missing("the RoPE key width", &[graph, hf].concat())),
        }
    }

    /// The query projection's width `heads * (nope + R)`.
    fn query(&self, c: &Checkpoint) -> Result<usize, SplitError> {
        let at = self.keys(&[
            ("q_b_proj.weight", true, 0),
            ("q_proj.weight", true, 0),
            ("q_b_proj.weight", false, 1),
            ("q_proj.weight", false, 1),
        ]);
        self.probe(c, &at)
            .map(|(_, n)| n)
            .ok_or_else(|| missing("the query width", &at))
    }
}

fn missing(what: &'static str, at: &[(String, usize)]) -> SplitError {
    SplitError::NoSource {
        what,
        keys: at.iter().map(|(k, _)| k.clone()).collect(),
    }
}

/// The cut of `part` out of a fused tensor of shape `fused`, for a graph weight of `shape`.
pub(crate) fn cut(
    c: &Checkpoint,
    layer: &MlaLayer,
    part: MlaPart,
    fused: &[usize],
    shape: &[u64],
) -> Result<Cut, SplitError> {
    let &[i, w] = shape else {
        return Err(SplitError::GraphRank { rank: shape.len() });
    };
    let (i, w) = (i as usize, w as usize);
    let rows = fused.first().copied().unwrap_or(0);
    match part {
        MlaPart::Latent => Ok(Cut::RowsT {
            rows,
            start: 0,
            len: w,
        }),
        MlaPart::RopeKey => {
            let r = layer.latent(c)?;
            Ok(Cut::RowsT {
                rows: r + w,
                start: r,
                len: w,
            })
        }
        MlaPart::Key | MlaPart::Value => {
            let r = i;
            let rope = layer.rope(c, r)?;
            let q = layer.query(c)?;
            // heads * nope: the graph's key width, or the rows left beside the values.
            let nope_all = match part {
                MlaPart::Key => w,
                _ => rows.checked_sub(w).ok_or_else(|| SplitError::Layout {
                    found: fused.to_vec(),
                    needs: format!("the values need {w} rows"),
                })?,
            };
            let heads = q
                .checked_sub(nope_all)
                .filter(|d| rope > 0 && d % rope == 0 && d / rope > 0)
                .map(|d| d / rope)
                .ok_or_else(|| SplitError::Layout {
                    found: fused.to_vec(),
                    needs: format!(
                        "no split into heads: the query width {q} minus the key width {nope_all} \
                         is not a positive multiple of the RoPE width {rope}"
                    ),
                })?;
            let v_all = rows.saturating_sub(nope_all);
            if nope_all % heads != 0 || v_all % heads != 0 || rows < nope_all {
                return Err(SplitError::Layout {
                    found: fused.to_vec(),
                    needs: format!(
                        "no split into {heads} heads of key width {nope_all} / {heads} and value \
                         width {v_all} / {heads}"
                    ),
                });
            }
            let (nope, v) = (nope_all / heads, v_all / heads);
            let (start, len) = match part {
                MlaPart::Key => (0, nope),
                _ => (nope, v),
            };
            Ok(Cut::HeadRowsT {
                heads,
                group: nope + v,
                start,
                len,
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::checkpoint::tests::file;
    use super::*;

    fn layer() -> MlaLayer {
        MlaLayer {
            hf: "model.layers.0.".into(),
            graph: "l0.".into(),
        }
    }

    fn ckpt(shapes: &[(&str, Vec<usize>)]) -> Checkpoint {
        let t: Vec<(&str, Vec<usize>, Vec<f32>)> = shapes
            .iter()
            .map(|(k, s)| (*k, s.clone(), vec![0.0; s.iter().product()]))
            .collect();
        let mut c = Checkpoint::new();
        c.add_file("f", file(&t)).unwrap();
        c
    }

    #[test]
    fn heads_follow_from_the_query_width() {
        // hidden 16, r 8, R 2, 3 heads of nope 4 and v 5; query LoRA 6.
        let c = ckpt(&[
            ("model.layers.0.self_attn.kv_a_layernorm.weight", vec![8]),
            (
                "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                vec![10, 16],
            ),
            ("model.layers.0.self_attn.q_b_proj.weight", vec![18, 6]),
            ("model.layers.0.self_attn.kv_b_proj.weight", vec![27, 8]),
        ]);
        let kv_b = [27, 8];
        let k = cut(&c, &layer(), MlaPart::Key, &kv_b, &[8, 12]).unwrap();
        assert_eq!(
            k,
            Cut::HeadRowsT {
                heads: 3,
                group: 9,
                start: 0,
                len: 4
            }
        );
        let v = cut(&c, &layer(), MlaPart::Value, &kv_b, &[8, 15]).unwrap();
        assert_eq!(
            v,
            Cut::HeadRowsT {
                heads: 3,
                group: 9,
                start: 4,
                len: 5
            }
        );
        let kv_a = [10, 16];
        let rope = cut(&c, &layer(), MlaPart::RopeKey, &kv_a, &[16, 2]).unwrap();
        assert_eq!(
            rope,
            Cut::RowsT {
                rows: 10,
                start: 8,
                len: 2
            }
        );
        let latent = cut(&c, &layer(), MlaPart::Latent, &kv_a, &[16, 8]).unwrap();
        assert_eq!(
            latent,
            Cut::RowsT {
                rows: 10,
                start: 0,
                len: 8
            }
        );
    }

    #[test]
    fn missing_or_inconsistent_shapes_are_explained() {
        let c = ckpt(&[("model.layers.0.self_attn.kv_b_proj.weight", vec![27, 8])]);
        let e = cut(&c, &layer(), MlaPart::Key, &[27, 8], &[8, 12])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kv_a_proj_with_mqa") && e.contains("k_rope_proj"),
            "{e}"
        );
        // A query width that leaves no whole number of heads.
        let c = ckpt(&[
            (
                "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                vec![10, 16],
            ),
            ("model.layers.0.self_attn.q_proj.weight", vec![17, 16]),
        ]);
        let e = cut(&c, &layer(), MlaPart::Key, &[27, 8], &[8, 12])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no split into heads"), "{e}");
        let e = cut(&c, &layer(), MlaPart::RopeKey, &[10, 16], &[16, 2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("kv_a_layernorm"), "{e}");
    }
}
