//! The executor's NVRTC kernels (`ops.cu`): compiled once per device for its architecture and
//! launched on burn-cuda's stream over [`Borrowed`] buffers whose sizes are checked first.

use super::blas::same_stream;
use super::buffer::Borrowed;
use super::error::{driver, CudaError, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
use std::ffi::c_void;
use std::sync::Arc;

/// The kernel source.
pub(crate) const SOURCE: &str = include_str!("ops.cu");

/// Entries per block of the routing sort (`CHUNK` in the source).
const SORT_CHUNK: usize = 256;
/// Warps per routing-sort block.
const SORT_WARPS: usize = SORT_CHUNK / 32;
/// Threads of the single routing-scan block (the size of its shared array).
const SCAN_THREADS: u32 = 1024;
/// Largest top-k of the router and combine (`MAX_TOPK`).
pub(crate) const MAX_TOPK: usize = 16;
/// Largest expert count of the router kernel (`MAX_EXPERTS`).
pub(crate) const MAX_EXPERTS: usize = 512;
/// Largest group count of the router kernel (a 64-bit mask).
pub(crate) const MAX_GROUPS: usize = 64;
/// bf16 elements per 16-byte vector.
const VEC: usize = 8;
/// Threads per block of the row kernels.
const ROW_THREADS: usize = 256;

/// The entry points of [`SOURCE`], in [`K`]'s order.
const ENTRY_POINTS: [&str; 13] = [
    "gather_rows",
    "combine_rows",
    "router_topk",
    "choice_major",
    "route_count",
    "route_scan",
    "route_place",
    "entry_rows",
    "seeded_fill",
    "rope",
    "softmax_rows",
    "norm_rows",
    "gated_act",
];

#[derive(Debug, Clone, Copy)]
enum K {
    Gather = 0,
    Combine = 1,
    Router = 2,
    ChoiceMajor = 3,
    RouteCount = 4,
    RouteScan = 5,
    RoutePlace = 6,
    EntryRows = 7,
    Seeded = 8,
    Rope = 9,
    Softmax = 10,
    Norm = 11,
    Gated = 12,
}

/// A kernel argument: a value whose address goes into the launch's parameter array.
trait Arg {
    fn ptr(&self) -> *mut c_void;
}

macro_rules! arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn ptr(&self) -> *mut c_void {
                self as *const $t as *mut c_void
            }
        }
    )*};
}
arg!(u64, i64, i32, f32, f64);

/// Grid, block and shared memory of a launch.
#[derive(Debug, Clone, Copy)]
struct Launch {
    grid: u32,
    block: u32,
    shared: u32,
}

/// One thread per element, 256 per block.
fn flat(n: usize) -> Launch {
    Launch {
        grid: n.div_ceil(256).max(1) as u32,
        block: 256,
        shared: 0,
    }
}

/// Launch geometry of a row kernel over `rows` rows of `cols` bf16: (vectors per row, rows per
/// block, launch).
fn rows_launch(rows: usize, cols: usize) -> Result<(i32, i32, Launch)> {
    if cols == 0 || cols % VEC != 0 {
        return Err(CudaError::Invalid(format!(
            "rows of {cols} bf16: the row kernels need a positive multiple of {VEC}"
        )));
    }
    let vpr = cols / VEC;
    let rpb = (ROW_THREADS / vpr).max(1);
    Ok((
        int(vpr, "vectors per row")?,
        rpb as i32,
        Launch {
            grid: rows.div_ceil(rpb).max(1) as u32,
            block: ROW_THREADS as u32,
            shared: 0,
        },
    ))
}

/// Fails unless every buffer has elements of the given width (bf16: 2, i32 and f32: 4).
fn widths(bufs: &[(&Borrowed<'_>, usize, &str)]) -> Result<()> {
    for &(b, bytes, what) in bufs {
        b.is_elem(bytes, what)?;
    }
    Ok(())
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Invalid(format!("{what} = {v} exceeds i32")))
}

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

/// The kernels, loaded on one device.
#[derive(Debug)]
pub(crate) struct Ops {
    _module: Arc<CudaModule>,
    f: Vec<CudaFunction>,
}

impl Ops {
    /// Compiles [`SOURCE`] for `ctx`'s device and loads every entry point.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Ops> {
        let cc = ctx
            .compute_capability()
            .map_err(driver("cuDeviceGetAttribute"))?;
        let options = vec![
            format!("--gpu-architecture=compute_{}{}", cc.0, cc.1),
            "--std=c++17".into(),
        ];
        let opts = CompileOptions {
            options: options.clone(),
            name: Some("moe_opt_ops.cu".into()),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(SOURCE, opts).map_err(|e| match e {
            CompileError::CompileError { log, .. } => CudaError::Compile {
                options: options.clone(),
                log: log.to_string_lossy().into_owned(),
            },
            other => CudaError::Compile {
                options: options.clone(),
                log: format!("{other:?}"),
            },
        })?;
        let module = ctx.load_module(ptx).map_err(driver("cuModuleLoadData"))?;
        let f = ENTRY_POINTS
            .iter()
            .map(|name| {
                module
                    .load_function(name)
                    .map_err(driver("cuModuleGetFunction"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Ops { _module: module, f })
    }

    /// Launches `k` on `bufs`' stream with `args` (buffers' addresses among them).
    ///
    /// # Safety
    /// `args` match the kernel's parameters in number, order and type, and every address among
    /// them is a live buffer at least as large as the kernel reads or writes with these sizes.
    unsafe fn launch(
        &self,
        k: K,
        l: Launch,
        bufs: &[&Borrowed<'_>],
        args: &[&dyn Arg],
    ) -> Result<()> {
        let stream = same_stream(bufs)?;
        let mut params: Vec<*mut c_void> = args.iter().map(|a| a.ptr()).collect();
        // SAFETY: the caller's contract; `params` points at values alive for the call.
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.f[k as usize].cu_function(),
                (l.grid, 1, 1),
                (l.block, 1, 1),
                l.shared,
                stream,
                &mut params,
            )
        }
        .map_err(driver(ENTRY_POINTS[k as usize]))
    }

    /// `dst[r] = src[idx[r]]` for `rows` rows of `cols` bf16 (zeros where `idx[r] < 0`; every
    /// `idx[r] < src rows`, which the caller's construction guarantees).
    pub fn gather_rows(
        &self,
        dst: &Borrowed<'_>,
        src: &Borrowed<'_>,
        idx: &Borrowed<'_>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        dst.holds(rows * cols, "gather destination")?;
        idx.holds(rows, "gather indices")?;
        widths(&[
            (dst, 2, "gather destination"),
            (src, 2, "gather source"),
            (idx, 4, "gather indices"),
        ])?;
        dst.aligned("gather destination", 16)?;
        src.aligned("gather source", 16)?;
        let (vpr, rpb, l) = rows_launch(rows, cols)?;
        let (d, s, i, n) = (dst.addr(), src.addr(), idx.addr(), int(rows, "rows")?);
        // SAFETY: gather_rows(Vec8*, const Vec8*, const int*, int, int, int); dst holds rows *
        // cols, idx rows entries, src every row an index names.
        unsafe {
            self.launch(
                K::Gather,
                l,
                &[dst, src, idx],
                &[&d, &s, &i, &n, &vpr, &rpb],
            )
        }
    }

    /// `out[t] = sum_j weight[t,j] * src[row[t,j]]` over `row >= 0`, `tokens` rows of `cols`.
    #[allow(clippy::too_many_arguments)]
    pub fn combine_rows(
        &self,
        out: &Borrowed<'_>,
        src: &Borrowed<'_>,
        row: &Borrowed<'_>,
        weight: &Borrowed<'_>,
        tokens: usize,
        k: usize,
        cols: usize,
    ) -> Result<()> {
        if tokens == 0 {
            return Ok(());
        }
        if k == 0 || k > MAX_TOPK {
            return Err(CudaError::Invalid(format!(
                "top-{k}: the combine kernel handles 1 to {MAX_TOPK}"
            )));
        }
        out.holds(tokens * cols, "combine output")?;
        row.holds(tokens * k, "combine rows")?;
        weight.holds(tokens * k, "combine weights")?;
        widths(&[
            (out, 2, "combine output"),
            (src, 2, "combine source"),
            (row, 4, "combine rows"),
            (weight, 2, "combine weights"),
        ])?;
        out.aligned("combine output", 16)?;
        src.aligned("combine source", 16)?;
        let (vpr, rpb, l) = rows_launch(tokens, cols)?;
        let (o, s, r, w) = (out.addr(), src.addr(), row.addr(), weight.addr());
        let (n, kk) = (int(tokens, "tokens")?, k as i32);
        // SAFETY: combine_rows(Vec8*, const Vec8*, const int*, const u16*, int, int, int, int);
        // sizes checked above; every row index names a row of src (made with it).
        unsafe {
            self.launch(
                K::Combine,
                l,
                &[out, src, row, weight],
                &[&o, &s, &r, &w, &n, &kk, &vpr, &rpb],
            )
        }
    }

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
        let chunks = total.div_ceil(SORT_CHUNK);
        let len = experts * chunks;
        expert.holds(total, "routing choices")?;
        expert_cm.holds(total, "routing entries")?;
        scratch.holds(Ops::sort_scratch(total, experts), "routing scratch")?;
        expert_off.holds(experts + 1, "expert offsets")?;
        sorted_token.holds(total, "sorted tokens")?;
        entry_pos.holds(total, "entry positions")?;
        for (b, what) in [
            (expert, "routing choices"),
            (expert_cm, "routing entries"),
            (scratch, "routing scratch"),
            (expert_off, "expert offsets"),
            (sorted_token, "sorted tokens"),
            (entry_pos, "entry positions"),
        ] {
            b.is_elem(4, what)?;
        }
        let counts = scratch.addr();
        let offsets = scratch.at(len)?.addr();
        let (t, kk, e, tot) = (
            int(tokens, "tokens")?,
            int(k, "k")?,
            int(experts, "experts")?,
            int(total, "routing entries")?,
        );
        let (ln, ch) = (int(len, "experts x chunks")?, chunks as i32);
        let (ex, cm, eo, st, ep) = (
            expert.addr(),
            expert_cm.addr(),
            expert_off.addr(),
            sorted_token.addr(),
            entry_pos.addr(),
        );
        let bufs = [
            expert,
            expert_cm,
            scratch,
            expert_off,
            sorted_token,
            entry_pos,
        ];
        let sort = Launch {
            grid: chunks as u32,
            block: SORT_CHUNK as u32,
            shared: (SORT_WARPS * experts * 4) as u32,
        };
        // SAFETY: the signatures of choice_major, route_count, route_scan and route_place;
        // every buffer's size is checked above (scratch: counts then offsets).
        unsafe {
            self.launch(K::ChoiceMajor, flat(total), &bufs, &[&ex, &t, &kk, &e, &cm])?;
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

    /// Fills `dst` with the seeded values of a block (see `seeded_fill` in the source): `bf16`
    /// or f32 elements, block `blk` at `off` of a tensor of `global` dims (at most 4).
    pub fn seeded_fill(
        &self,
        dst: &Borrowed<'_>,
        bf16: bool,
        key: u64,
        scale: f64,
        global: &[u64],
        off: &[usize],
        blk: &[usize],
    ) -> Result<()> {
        let rank = global.len();
        if rank > 4 || off.len() != rank || blk.len() != rank {
            return Err(CudaError::Invalid(format!(
                "a seeded block of rank {rank} (at most 4, offsets and block of the same rank)"
            )));
        }
        let n: usize = blk.iter().product();
        if n == 0 {
            return Ok(());
        }
        dst.holds(n, "seeded block")?;
        dst.is_elem(if bf16 { 2 } else { 4 }, "seeded block")?;
        let mut stride = [1i64; 4];
        for d in (0..rank.saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * global[d + 1] as i64;
        }
        let pad = |v: &[usize]| {
            let mut out = [1i64; 4];
            for (o, &x) in out.iter_mut().zip(v) {
                *o = x as i64;
            }
            out
        };
        let (b, o) = (pad(blk), pad(off));
        let (d, bf, nn, r) = (dst.addr(), i32::from(bf16), n as i64, rank as i32);
        let l = Launch {
            grid: n.div_ceil(256).clamp(1, 65_536) as u32,
            block: 256,
            shared: 0,
        };
        // SAFETY: seeded_fill(void*, int, i64, u64, double, int, i64 x12); dst holds n
        // elements of the chosen type (checked: the borrow counts elements of its own type,
        // which the caller chose to match `bf16`).
        unsafe {
            self.launch(
                K::Seeded,
                l,
                &[dst],
                &[
                    &d, &bf, &nn, &key, &scale, &r, &b[0], &b[1], &b[2], &b[3], &o[0], &o[1],
                    &o[2], &o[3], &stride[0], &stride[1], &stride[2], &stride[3],
                ],
            )
        }
    }
}

impl Ops {
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

    /// RMSNorm or (`center`) LayerNorm of `groups` groups of `g` bf16 with weight `w` and bias
    /// `b` (`[g]` bf16).
    #[allow(clippy::too_many_arguments)]
    pub fn norm_rows(
        &self,
        y: &Borrowed<'_>,
        x: &Borrowed<'_>,
        w: &Borrowed<'_>,
        b: Option<&Borrowed<'_>>,
        groups: usize,
        g: usize,
        eps: f32,
        center: bool,
    ) -> Result<()> {
        if groups == 0 || g == 0 {
            return Ok(());
        }
        x.holds(groups * g, "norm input")?;
        y.holds(groups * g, "norm output")?;
        w.holds(g, "norm weight")?;
        widths(&[
            (x, 2, "norm input"),
            (y, 2, "norm output"),
            (w, 2, "norm weight"),
        ])?;
        if let Some(b) = b {
            b.holds(g, "norm bias")?;
            b.is_elem(2, "norm bias")?;
        }
        let mut bufs = vec![y, x, w];
        bufs.extend(b);
        let (yy, xx, ww, bb) = (y.addr(), x.addr(), w.addr(), b.map_or(0, |b| b.addr()));
        let (n, gg, c) = (int(groups, "groups")?, int(g, "group")?, i32::from(center));
        let l = Launch {
            grid: n as u32,
            block: 256,
            shared: 0,
        };
        // SAFETY: norm_rows(u16*, const u16* x3, int, int, float, int); sizes checked above.
        unsafe { self.launch(K::Norm, l, &bufs, &[&yy, &xx, &ww, &bb, &n, &gg, &eps, &c]) }
    }

    /// `y = act(g) * u` over `n` bf16; `gelu` (erf) or SiLU.
    pub fn gated_act(
        &self,
        y: &Borrowed<'_>,
        g: &Borrowed<'_>,
        u: &Borrowed<'_>,
        n: usize,
        gelu: bool,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        for (b, what) in [(y, "output"), (g, "gate"), (u, "up")] {
            b.holds(n, what)?;
            b.is_elem(2, what)?;
        }
        let (yy, gg, uu, nn, act) = (y.addr(), g.addr(), u.addr(), n as i64, i32::from(gelu));
        let l = Launch {
            grid: n.div_ceil(256).clamp(1, 65_536) as u32,
            block: 256,
            shared: 0,
        };
        // SAFETY: gated_act(u16*, const u16*, const u16*, i64, int); sizes checked above.
        unsafe { self.launch(K::Gated, l, &[y, g, u], &[&yy, &gg, &uu, &nn, &act]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_once_in_the_source() {
        for name in ENTRY_POINTS {
            let decl = format!("__global__ void {name}(");
            assert_eq!(SOURCE.matches(&decl).count(), 1, "{name}");
        }
        assert_eq!(
            SOURCE.matches("extern \"C\" __global__").count(),
            ENTRY_POINTS.len()
        );
        assert_eq!(ENTRY_POINTS[K::Seeded as usize], "seeded_fill");
        assert_eq!(ENTRY_POINTS[K::EntryRows as usize], "entry_rows");
    }

    #[test]
    fn source_constants_match_the_host() {
        assert!(SOURCE.contains(&format!("#define CHUNK {SORT_CHUNK}")));
        assert!(SOURCE.contains(&format!("#define MAX_TOPK {MAX_TOPK}")));
        assert!(SOURCE.contains(&format!("#define MAX_EXPERTS {MAX_EXPERTS}")));
        assert!(SOURCE.contains(&format!("__shared__ int part[{SCAN_THREADS}]")));
        assert!(SOURCE.contains(&format!("float gs[{MAX_GROUPS}]")));
    }

    #[test]
    fn kernels_use_no_atomics() {
        let code: String = SOURCE
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect();
        assert!(!code.contains("atomic"));
    }

    #[test]
    fn row_launches_cover_every_row() {
        let (vpr, rpb, l) = rows_launch(1000, 64).expect("valid");
        assert_eq!((vpr, rpb), (8, 32));
        assert!(l.grid as usize * rpb as usize >= 1000);
        assert!(rows_launch(10, 12).is_err());
    }

    /// Compiles the kernels for Hopper when libnvrtc can be loaded (no GPU needed).
    #[test]
    fn compiles_with_nvrtc_where_available() {
        if super::super::libs::load("nvrtc").is_err() {
            eprintln!("NVRTC not found, kernel compilation not checked");
            return;
        }
        let opts = CompileOptions {
            options: vec!["--gpu-architecture=compute_90".into(), "--std=c++17".into()],
            ..Default::default()
        };
        if let Err(e) = compile_ptx_with_opts(SOURCE, opts) {
            panic!("{e:?}");
        }
    }
}
