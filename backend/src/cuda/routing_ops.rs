//! The routing kernels' launches (`ops.cu`): the router, the stable routing sort by expert and
//! each (token, choice)'s row, over [`Borrowed`] buffers whose sizes are checked first.

use super::buffer::Borrowed;
use super::error::{CudaError, Result};
use super::ops::{
    flat, int, widths, Launch, Ops, K, MAX_EXPERTS, MAX_GROUPS, MAX_TOPK, SCAN_THREADS, SORT_CHUNK,
    SORT_WARPS,
};

/// The router's options, as the kernel takes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouterArgs {
    pub tokens: usize,
    pub experts: usize,
    pub k: usize,
    /// 0 softmax, 1 sigmoid.
    pub score: i32,
    /// 0: no group limit.
    pub groups: usize,
    pub topk_groups: usize,
    /// 0 max, 1 sum of the top two.
    pub group_score: i32,
    pub normalize: bool,
    pub scale: f32,
}

impl Ops {
    /// The router on bf16 `logits` `[tokens, experts]` (and bf16 `bias` `[experts]`): i32
    /// `expert` and bf16 `weight`, both `[tokens, k]`.
    pub fn router(
        &self,
        a: RouterArgs,
        logits: &Borrowed<'_>,
        bias: Option<&Borrowed<'_>>,
        expert: &Borrowed<'_>,
        weight: &Borrowed<'_>,
    ) -> Result<()> {
        if a.tokens == 0 {
            return Ok(());
        }
        let groups_ok = a.groups == 0
            || (a.groups <= MAX_GROUPS
                && a.experts % a.groups == 0
                && (1..=a.groups).contains(&a.topk_groups)
                && a.k <= a.topk_groups * (a.experts / a.groups));
        if a.k == 0 || a.k > MAX_TOPK || a.k > a.experts || a.experts > MAX_EXPERTS || !groups_ok {
            return Err(CudaError::Invalid(format!("router kernel limits: {a:?}")));
        }
        logits.holds(a.tokens * a.experts, "router logits")?;
        expert.holds(a.tokens * a.k, "router experts")?;
        weight.holds(a.tokens * a.k, "router weights")?;
        widths(&[
            (logits, 2, "router logits"),
            (expert, 4, "router experts"),
            (weight, 2, "router weights"),
        ])?;
        if let Some(b) = bias {
            b.holds(a.experts, "router bias")?;
            b.is_elem(2, "router bias")?;
        }
        let mut bufs = vec![logits, expert, weight];
        bufs.extend(bias);
        let (lg, bs, ex, wt) = (
            logits.addr(),
            bias.map_or(0, |b| b.addr()),
            expert.addr(),
            weight.addr(),
        );
        let (n, e, k) = (int(a.tokens, "tokens")?, a.experts as i32, a.k as i32);
        let (g, tg, gs, norm) = (
            a.groups as i32,
            a.topk_groups as i32,
            a.group_score,
            i32::from(a.normalize),
        );
        let l = Launch {
            grid: a.tokens.div_ceil(128) as u32,
            block: 128,
            shared: 0,
        };
        // SAFETY: router_topk(const u16*, const u16*, int x9, float, int*, u16*); sizes checked,
        // limits checked against the kernel's fixed arrays.
        unsafe {
            self.launch(
                K::Router,
                l,
                &bufs,
                &[
                    &lg, &bs, &n, &e, &k, &a.score, &g, &tg, &gs, &norm, &a.scale, &ex, &wt,
                ],
            )
        }
    }

    /// The routing sort of `expert` (`[tokens, k]` i32) in priority order (choice-major):
    /// `expert_cm` `[tokens * k]`, `expert_off` `[experts + 1]`, `sorted_token` and
    /// `entry_pos` `[tokens * k]`; `scratch` holds at least [`Ops::sort_scratch`] ints.
    #[allow(clippy::too_many_arguments)]
    pub fn route_sort(
        &self,
        expert: &Borrowed<'_>,
        tokens: usize,
        k: usize,
        experts: usize,
        expert_cm: &Borrowed<'_>,
        scratch: &Borrowed<'_>,
        expert_off: &Borrowed<'_>,
        sorted_token: &Borrowed<'_>,
        entry_pos: &Borrowed<'_>,
    ) -> Result<()> {
        let total = tokens * k;
        if total == 0 {
            return Ok(());
        }
        expert.holds(total, "routing choices")?;
        expert_cm.holds(total, "routing entries")?;
        expert.is_elem(4, "routing choices")?;
        expert_cm.is_elem(4, "routing entries")?;
        let (t, kk, e) = (
            int(tokens, "tokens")?,
            int(k, "k")?,
            int(experts, "experts")?,
        );
        let (ex, cm) = (expert.addr(), expert_cm.addr());
        let bufs = [expert, expert_cm];
        // SAFETY: choice_major(const int*, int, int, int, int*); the sizes checked above.
        unsafe { self.launch(K::ChoiceMajor, flat(total), &bufs, &[&ex, &t, &kk, &e, &cm])? };
        self.sort_entries(
            expert_cm,
            total,
            experts,
            tokens,
            scratch,
            expert_off,
            sorted_token,
            entry_pos,
        )
    }

    /// The stable routing sort of `total` entries (experts in `[0, experts)`, -1: none) into
    /// expert-major order: `expert_off` `[experts + 1]`, `sorted[pos]` = entry index modulo `n`,
    /// `entry_pos[p]` = the entry's position (-1 for none).
    #[allow(clippy::too_many_arguments)]
    pub fn sort_entries(
        &self,
        entries: &Borrowed<'_>,
        total: usize,
        experts: usize,
        n: usize,
        scratch: &Borrowed<'_>,
        expert_off: &Borrowed<'_>,
        sorted: &Borrowed<'_>,
        entry_pos: &Borrowed<'_>,
    ) -> Result<()> {
        if total == 0 {
            return Ok(());
        }
        if experts == 0 || experts > MAX_EXPERTS || n == 0 {
            return Err(CudaError::Invalid(format!(
                "routing sort of {total} entries over {experts} experts (1 to {MAX_EXPERTS})"
            )));
        }
        let chunks = total.div_ceil(SORT_CHUNK);
        let len = experts * chunks;
        entries.holds(total, "routing entries")?;
        scratch.holds(Ops::sort_scratch(total, experts), "routing scratch")?;
        expert_off.holds(experts + 1, "expert offsets")?;
        sorted.holds(total, "sorted entries")?;
        entry_pos.holds(total, "entry positions")?;
        for (b, what) in [
            (entries, "routing entries"),
            (scratch, "routing scratch"),
            (expert_off, "expert offsets"),
            (sorted, "sorted entries"),
            (entry_pos, "entry positions"),
        ] {
            b.is_elem(4, what)?;
        }
        let counts = scratch.addr();
        let offsets = scratch.at(len)?.addr();
        let (e, tot, t) = (
            int(experts, "experts")?,
            int(total, "routing entries")?,
            int(n, "n")?,
        );
        let (ln, ch) = (int(len, "experts x chunks")?, chunks as i32);
        let (cm, eo, st, ep) = (
            entries.addr(),
            expert_off.addr(),
            sorted.addr(),
            entry_pos.addr(),
        );
        let bufs = [entries, scratch, expert_off, sorted, entry_pos];
        let sort = Launch {
            grid: chunks as u32,
            block: SORT_CHUNK as u32,
            shared: (SORT_WARPS * experts * 4) as u32,
        };
        // SAFETY: the signatures of route_count, route_scan and route_place; every buffer's size
        // is checked above (scratch: counts then offsets); entries outside [0, experts) are
        // treated as none by the kernels.
        unsafe {
            self.launch(K::RouteCount, sort, &bufs, &[&cm, &tot, &e, &counts])?;
            let one = Launch {
                grid: 1,
                block: SCAN_THREADS,
                shared: 0,
            };
            self.launch(
                K::RouteScan,
                one,
                &bufs,
                &[&counts, &ln, &ch, &e, &offsets, &eo],
            )?;
            self.launch(
                K::RoutePlace,
                sort,
                &bufs,
                &[&cm, &tot, &e, &t, &offsets, &st, &ep],
            )
        }
    }

    /// Ints of scratch [`Ops::route_sort`] needs for `entries` entries of `experts` experts.
    pub fn sort_scratch(entries: usize, experts: usize) -> usize {
        2 * experts * entries.div_ceil(SORT_CHUNK) + 1
    }

    /// Each (token, choice)'s row among the sorted rows, or -1 past `cap` (token-major).
    #[allow(clippy::too_many_arguments)]
    pub fn entry_rows(
        &self,
        entry_pos: &Borrowed<'_>,
        expert_cm: &Borrowed<'_>,
        expert_off: &Borrowed<'_>,
        tokens: usize,
        k: usize,
        cap: usize,
        entry_row: &Borrowed<'_>,
    ) -> Result<()> {
        let total = tokens * k;
        if total == 0 {
            return Ok(());
        }
        for (b, what) in [
            (entry_pos, "entry positions"),
            (expert_cm, "routing entries"),
        ] {
            b.holds(total, what)?;
        }
        entry_row.holds(total, "entry rows")?;
        expert_off.holds(1, "expert offsets")?;
        for (b, what) in [
            (entry_pos, "entry positions"),
            (expert_cm, "routing entries"),
            (expert_off, "expert offsets"),
            (entry_row, "entry rows"),
        ] {
            b.is_elem(4, what)?;
        }
        let (ep, cm, eo, er) = (
            entry_pos.addr(),
            expert_cm.addr(),
            expert_off.addr(),
            entry_row.addr(),
        );
        let (n, kk, c) = (
            int(tokens, "tokens")?,
            int(k, "k")?,
            int(cap.min(i32::MAX as usize), "capacity")?,
        );
        // SAFETY: entry_rows(const int* x3, int, int, int, int*); sizes checked; expert_off
        // holds an entry for every expert the entries name (made by the same sort).
        unsafe {
            self.launch(
                K::EntryRows,
                flat(total),
                &[entry_pos, expert_cm, expert_off, entry_row],
                &[&ep, &cm, &eo, &n, &kk, &c, &er],
            )
        }
    }
}
