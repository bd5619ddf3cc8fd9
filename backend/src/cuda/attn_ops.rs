//! The attention kernels' launches (`attention.cu`): RoPE, the materialised-scores softmax, and
//! the fused flash-style attention, each over [`Borrowed`] buffers whose sizes are checked first.

use super::buffer::Borrowed;
use super::error::{CudaError, Result};
use super::ops::{int, widths, Launch, Ops, K};

/// An attention op's shape as the softmax kernel takes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SoftmaxArgs {
    /// Rows: sequences x heads x queries.
    pub rows: usize,
    pub seq: usize,
    pub kv: usize,
    pub heads: usize,
    /// 0 full, 1 causal, 2 sliding (window `w`), 3 chunked (chunk `w`).
    pub mask: i32,
    pub w: usize,
}

/// A fused attention's shape (see `flash_attn` in `attention.cu`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlashArgs {
    /// Sequences.
    pub b: usize,
    pub seq: usize,
    pub kv: usize,
    /// This rank's query heads and kv heads.
    pub heads: usize,
    pub kv_heads: usize,
    /// Head dim of q, k and v (64 or 128).
    pub d: usize,
    /// Global index of the first local query head, query heads per kv head, global index of the
    /// first local kv head.
    pub first_head: usize,
    pub group: usize,
    pub first_kv_head: usize,
    pub scale: f32,
    /// 0 full, 1 causal, 2 sliding (window `w`), 3 chunked (chunk `w`).
    pub mask: i32,
    pub w: usize,
}

/// Queries per block of the fused kernel (`FA_BM`).
const FLASH_BM: usize = 64;

impl Ops {
    /// Whether the fused kernel takes heads of `d` (q, k and v alike).
    pub fn flash_takes(d: usize, v_dim: usize) -> bool {
        (d == 64 || d == 128) && v_dim == d
    }

    /// Fused attention of bf16 `q` `[b * seq, heads * d]`, `k` and `v` `[b * kv, kv_heads * d]`
    /// into `out` `[b * seq, heads * d]`, with optional bf16 `sinks` `[heads]`.
    pub fn flash(
        &self,
        out: &Borrowed<'_>,
        q: &Borrowed<'_>,
        k: &Borrowed<'_>,
        v: &Borrowed<'_>,
        sinks: Option<&Borrowed<'_>>,
        a: FlashArgs,
    ) -> Result<()> {
        if a.b == 0 || a.seq == 0 || a.heads == 0 {
            return Ok(());
        }
        if !Ops::flash_takes(a.d, a.d) || a.group == 0 || (a.mask >= 2 && a.w == 0) {
            return Err(CudaError::Invalid(format!(
                "fused attention does not take {a:?}"
            )));
        }
        // Every local query head's kv head must be local (the kernel indexes k and v by it).
        for h in 0..a.heads {
            let g = (a.first_head + h) / a.group;
            if g < a.first_kv_head || g - a.first_kv_head >= a.kv_heads {
                return Err(CudaError::Invalid(format!(
                    "query head {} needs kv head {g}, which this rank does not hold",
                    a.first_head + h
                )));
            }
        }
        q.holds(a.b * a.seq * a.heads * a.d, "attention queries")?;
        out.holds(a.b * a.seq * a.heads * a.d, "attention output")?;
        k.holds(a.b * a.kv * a.kv_heads * a.d, "attention keys")?;
        v.holds(a.b * a.kv * a.kv_heads * a.d, "attention values")?;
        widths(&[
            (q, 2, "attention queries"),
            (k, 2, "attention keys"),
            (v, 2, "attention values"),
            (out, 2, "attention output"),
        ])?;
        for (x, what) in [
            (q, "attention queries"),
            (k, "attention keys"),
            (v, "attention values"),
            (out, "attention output"),
        ] {
            x.aligned(what, 16)?;
        }
        if let Some(s) = sinks {
            s.holds(a.heads, "attention sinks")?;
            s.is_elem(2, "attention sinks")?;
        }
        let blocks = a.b * a.seq.div_ceil(FLASH_BM) * a.heads;
        let grid = u32::try_from(blocks)
            .map_err(|_| CudaError::Invalid(format!("{blocks} attention blocks exceed a grid")))?;
        let mut bufs = vec![out, q, k, v];
        bufs.extend(sinks);
        let (o, qq, kk, vv, ss) = (
            out.addr(),
            q.addr(),
            k.addr(),
            v.addr(),
            sinks.map_or(0, |s| s.addr()),
        );
        let (seq, kv, hl, kvl) = (
            int(a.seq, "seq")?,
            int(a.kv, "kv")?,
            int(a.heads, "heads")?,
            int(a.kv_heads, "kv heads")?,
        );
        let (fh, grp, fkv, w) = (
            int(a.first_head, "first head")?,
            int(a.group, "group")?,
            int(a.first_kv_head, "first kv head")?,
            int(a.w.min(i32::MAX as usize), "window")?,
        );
        let kernel = if a.d == 64 { K::Flash64 } else { K::Flash128 };
        let l = Launch {
            grid,
            block: 128,
            shared: 0,
        };
        // SAFETY: flash_attn_d{64,128}(u16*, const u16* x4, int x7, float, int, int); every
        // buffer holds what the kernel reads or writes at these sizes (checked above), rows are
        // 16-byte aligned (d and the base addresses), and every kv head index it forms is local.
        unsafe {
            self.launch(
                kernel,
                l,
                &bufs,
                &[
                    &o, &qq, &kk, &vv, &ss, &seq, &kv, &hl, &kvl, &fh, &grp, &fkv, &a.scale,
                    &a.mask, &w,
                ],
            )
        }
    }

    /// RoPE of `x` (`[rows, heads * d]` bf16) into `y` at positions `row % seq`, with `inv_freq`
    /// (f32, `rd / 2` frequencies) over the last `rd` dims of every head; `interleaved` pairs.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        y: &Borrowed<'_>,
        x: &Borrowed<'_>,
        inv_freq: &Borrowed<'_>,
        rows: usize,
        heads: usize,
        d: usize,
        rd: usize,
        seq: usize,
        interleaved: bool,
        cs_scale: f32,
    ) -> Result<()> {
        let n = rows * heads * d;
        if n == 0 {
            return Ok(());
        }
        if rd > d || rd % 2 != 0 || seq == 0 {
            return Err(CudaError::Invalid(format!(
                "RoPE of {rd} dims in heads of {d}, sequences of {seq}"
            )));
        }
        x.holds(n, "RoPE input")?;
        y.holds(n, "RoPE output")?;
        inv_freq.holds(rd / 2, "RoPE frequencies")?;
        widths(&[
            (x, 2, "RoPE input"),
            (y, 2, "RoPE output"),
            (inv_freq, 4, "RoPE frequencies"),
        ])?;
        let (yy, xx, f) = (y.addr(), x.addr(), inv_freq.addr());
        let (r, h, dd, rr, s, pr) = (
            int(rows, "rows")?,
            int(heads, "heads")?,
            int(d, "head dim")?,
            int(rd, "rope dim")?,
            int(seq, "seq")?,
            i32::from(interleaved),
        );
        let l = Launch {
            grid: n.div_ceil(256).clamp(1, 65_536) as u32,
            block: 256,
            shared: 0,
        };
        // SAFETY: rope(u16*, const u16*, const float*, int x6, float); sizes checked above.
        unsafe {
            self.launch(
                K::Rope,
                l,
                &[y, x, inv_freq],
                &[&yy, &xx, &f, &r, &h, &dd, &rr, &s, &pr, &cs_scale],
            )
        }
    }

    /// Masked softmax of fp32 scores `s` (`[rows, kv]`) into bf16 `p`, sinks bf16 `[heads]`.
    pub fn softmax_rows(
        &self,
        p: &Borrowed<'_>,
        s: &Borrowed<'_>,
        sinks: Option<&Borrowed<'_>>,
        a: SoftmaxArgs,
    ) -> Result<()> {
        if a.rows == 0 || a.kv == 0 {
            return Ok(());
        }
        s.holds(a.rows * a.kv, "attention scores")?;
        p.holds(a.rows * a.kv, "attention probabilities")?;
        widths(&[
            (s, 4, "attention scores"),
            (p, 2, "attention probabilities"),
        ])?;
        if let Some(k) = sinks {
            k.holds(a.heads, "attention sinks")?;
            k.is_elem(2, "attention sinks")?;
        }
        let mut bufs = vec![p, s];
        bufs.extend(sinks);
        let (pp, ss, kk) = (p.addr(), s.addr(), sinks.map_or(0, |k| k.addr()));
        let (r, q, kv, h, w) = (
            int(a.rows, "rows")?,
            int(a.seq, "seq")?,
            int(a.kv, "kv")?,
            int(a.heads, "heads")?,
            int(a.w.min(i32::MAX as usize), "window")?,
        );
        let l = Launch {
            grid: r as u32,
            block: 256,
            shared: 0,
        };
        // SAFETY: softmax_rows(u16*, const float*, const u16*, int x6); sizes checked above.
        unsafe {
            self.launch(
                K::Softmax,
                l,
                &bufs,
                &[&pp, &ss, &kk, &r, &q, &kv, &h, &a.mask, &w],
            )
        }
    }
}
