//! PPMoE's local routing on the device (`ppmoe.cu`): `local_routes` as a routing sort of this
//! rank's (token, choice) pairs, the grouped FFN's offsets from device counts, and `index_add` as
//! a per-token sum through the sort's inverse map (no atomics).

use super::buffer::Borrowed;
use super::error::{CudaError, Result};
use super::ops::{flat, int, rows_launch, widths, Ops, K, MAX_TOPK};

/// One `local_routes` on the device: `tokens x k` routing choices (i32), of which this rank's
/// experts are `[first, first + count)`, into `rows` output rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalArgs {
    pub tokens: usize,
    pub k: usize,
    pub first: usize,
    pub count: usize,
    pub rows: usize,
}

/// The buffers of one `local_routes`: outputs, and the sort's scratch.
#[derive(Debug)]
pub(crate) struct LocalBufs<'a> {
    /// i32 `[tokens * k]` routing choices and bf16 `[tokens * k]` weights (inputs).
    pub idx: &'a Borrowed<'a>,
    pub w: &'a Borrowed<'a>,
    /// i32 `[tokens * k]` local expert of every pair (-1: another rank's).
    pub entries: &'a Borrowed<'a>,
    /// i32 [`Ops::sort_scratch`], `[count + 1]`, `[tokens * k]`.
    pub scratch: &'a Borrowed<'a>,
    pub off: &'a Borrowed<'a>,
    pub sorted: &'a Borrowed<'a>,
    /// i32 `[tokens * k]`: each pair's row (-1: not routed here), the inverse map.
    pub entry_pos: &'a Borrowed<'a>,
    /// Outputs: i32 `[rows]` token ids, bf16 `[rows]` weights, i32 `[count]` counts.
    pub ids: &'a Borrowed<'a>,
    pub w_out: &'a Borrowed<'a>,
    pub counts: &'a Borrowed<'a>,
}

impl Ops {
    /// `local_routes` (dropless) of `b.idx`, `b.w` (see [`LocalBufs`]).
    pub fn local_routes(&self, a: LocalArgs, b: &LocalBufs<'_>) -> Result<()> {
        let total = a.tokens * a.k;
        if a.k == 0 || a.k > MAX_TOPK || a.count == 0 {
            return Err(CudaError::Invalid(format!("local routes of {a:?}")));
        }
        b.idx.holds(total, "routing choices")?;
        b.w.holds(total, "routing weights")?;
        b.entries.holds(total, "local entries")?;
        b.ids.holds(a.rows, "routed token ids")?;
        b.w_out.holds(a.rows, "routed weights")?;
        b.counts.holds(a.count, "local expert counts")?;
        widths(&[
            (b.idx, 4, "routing choices"),
            (b.w, 2, "routing weights"),
            (b.entries, 4, "local entries"),
            (b.ids, 4, "routed token ids"),
            (b.w_out, 2, "routed weights"),
            (b.counts, 4, "local expert counts"),
        ])?;
        let (tot, first, count) = (
            int(total, "pairs")?,
            int(a.first, "first expert")?,
            int(a.count, "experts")?,
        );
        let (ix, en) = (b.idx.addr(), b.entries.addr());
        if total > 0 {
            // SAFETY: local_entries(const int*, int, int, int, int*); idx and entries hold
            // `total` entries (checked above).
            unsafe {
                self.launch(
                    K::LocalEntries,
                    flat(total),
                    &[b.idx, b.entries],
                    &[&ix, &tot, &first, &count, &en],
                )?;
            }
        }
        // `n = total`: the sort lists entry indices, token-major, so tokens ascend per expert.
        self.sort_entries(
            b.entries,
            total,
            a.count,
            total.max(1),
            b.scratch,
            b.off,
            b.sorted,
            b.entry_pos,
        )?;
        let (tk, kk, rows) = (
            int(a.tokens, "tokens")?,
            int(a.k, "k")?,
            int(a.rows, "rows")?,
        );
        let (so, of, ww, ids, wo, cn, ep) = (
            b.sorted.addr(),
            b.off.addr(),
            b.w.addr(),
            b.ids.addr(),
            b.w_out.addr(),
            b.counts.addr(),
            b.entry_pos.addr(),
        );
        let threads = a.rows.max(a.count).max(total);
        // SAFETY: local_finish(const int*, const int*, const u16*, int x4, int*, u16*, int*,
        // int*); sorted and entry_pos hold `total` entries, off `count + 1` (checked by
        // sort_entries), ids and w_out `rows`, counts `count`, w `total` (checked above); the
        // kernel reads sorted only below min(off[count], rows, total).
        unsafe {
            self.launch(
                K::LocalFinish,
                flat(threads),
                &[b.sorted, b.off, b.w, b.ids, b.w_out, b.counts, b.entry_pos],
                &[&so, &of, &ww, &tk, &kk, &rows, &count, &ids, &wo, &cn, &ep],
            )
        }
    }

    /// Offsets `[experts + 1]` of device `counts` `[experts]` (i32).
    pub fn count_offsets(
        &self,
        counts: &Borrowed<'_>,
        experts: usize,
        off: &Borrowed<'_>,
    ) -> Result<()> {
        counts.holds(experts, "expert counts")?;
        off.holds(experts + 1, "expert offsets")?;
        widths(&[(counts, 4, "expert counts"), (off, 4, "expert offsets")])?;
        let (c, e, o) = (counts.addr(), int(experts, "experts")?, off.addr());
        // SAFETY: count_offsets(const int*, int, int*); sizes checked above.
        unsafe { self.launch(K::CountOffsets, flat(1), &[counts, off], &[&c, &e, &o]) }
    }

    /// `out[t] = buf[t] + sum_j scale[s] * src[s]`, `s = entry_row[t * k + j]` (rows of `cols`
    /// bf16; `scale` `[src rows]` bf16 or none).
    #[allow(clippy::too_many_arguments)]
    pub fn index_add_rows(
        &self,
        out: &Borrowed<'_>,
        buf: &Borrowed<'_>,
        src: &Borrowed<'_>,
        scale: Option<&Borrowed<'_>>,
        entry_row: &Borrowed<'_>,
        tokens: usize,
        k: usize,
        cols: usize,
    ) -> Result<()> {
        if tokens == 0 {
            return Ok(());
        }
        if k == 0 || k > MAX_TOPK {
            return Err(CudaError::Invalid(format!(
                "index_add over top-{k} (1 to {MAX_TOPK})"
            )));
        }
        out.holds(tokens * cols, "index_add output")?;
        buf.holds(tokens * cols, "index_add buffer")?;
        entry_row.holds(tokens * k, "index_add rows")?;
        widths(&[
            (out, 2, "index_add output"),
            (buf, 2, "index_add buffer"),
            (src, 2, "index_add source"),
            (entry_row, 4, "index_add rows"),
        ])?;
        for (x, what) in [
            (out, "index_add output"),
            (buf, "index_add buffer"),
            (src, "index_add source"),
        ] {
            x.aligned(what, 16)?;
        }
        let src_rows = src.len() / cols.max(1);
        if let Some(s) = scale {
            s.holds(src_rows, "index_add scale")?;
            s.is_elem(2, "index_add scale")?;
        }
        let (vpr, rpb, l) = rows_launch(tokens, cols)?;
        let (o, bb, ss, sc, er) = (
            out.addr(),
            buf.addr(),
            src.addr(),
            scale.map_or(0, |s| s.addr()),
            entry_row.addr(),
        );
        let (t, kk, sr) = (
            int(tokens, "tokens")?,
            int(k, "k")?,
            int(src_rows, "source rows")?,
        );
        let mut bufs = vec![out, buf, src, entry_row];
        bufs.extend(scale);
        // SAFETY: index_add_rows(Vec8*, const Vec8* x2, const u16*, const int*, int x5); out and
        // buf hold tokens x cols, entry_row tokens x k, scale src_rows; the kernel reads only
        // rows of src below src_rows.
        unsafe {
            self.launch(
                K::IndexAdd,
                l,
                &bufs,
                &[&o, &bb, &ss, &sc, &er, &t, &kk, &sr, &vpr, &rpb],
            )
        }
    }
}
