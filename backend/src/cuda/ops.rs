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
pub(crate) const SOURCE: &str = concat!(
    include_str!("ops.cu"),
    include_str!("attention.cu"),
    include_str!("grouped.cu"),
    include_str!("ppmoe.cu")
);

/// Entries per block of the routing sort (`CHUNK` in the source).
pub(super) const SORT_CHUNK: usize = 256;
/// Warps per routing-sort block.
pub(super) const SORT_WARPS: usize = SORT_CHUNK / 32;
/// Threads of the single routing-scan block (the size of its shared array).
pub(super) const SCAN_THREADS: u32 = 1024;
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
const ENTRY_POINTS: [&str; 21] = [
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
    "flash_attn_d64",
    "flash_attn_d128",
    "grouped_tiles",
    "grouped_gemm",
    "local_entries",
    "local_finish",
    "count_offsets",
    "index_add_rows",
];

#[derive(Debug, Clone, Copy)]
pub(super) enum K {
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
    Flash64 = 13,
    Flash128 = 14,
    GroupedTiles = 15,
    GroupedGemm = 16,
    LocalEntries = 17,
    LocalFinish = 18,
    CountOffsets = 19,
    IndexAdd = 20,
}

/// A kernel argument: a value whose address goes into the launch's parameter array.
pub(super) trait Arg {
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
pub(super) struct Launch {
    pub grid: u32,
    pub block: u32,
    pub shared: u32,
}

/// One thread per element, 256 per block.
pub(super) fn flat(n: usize) -> Launch {
    Launch {
        grid: n.div_ceil(256).max(1) as u32,
        block: 256,
        shared: 0,
    }
}

/// Launch geometry of a row kernel over `rows` rows of `cols` bf16: (vectors per row, rows per
/// block, launch).
pub(super) fn rows_launch(rows: usize, cols: usize) -> Result<(i32, i32, Launch)> {
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
pub(super) fn widths(bufs: &[(&Borrowed<'_>, usize, &str)]) -> Result<()> {
    for &(b, bytes, what) in bufs {
        b.is_elem(bytes, what)?;
    }
    Ok(())
}

pub(super) fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Invalid(format!("{what} = {v} exceeds i32")))
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
    pub(super) unsafe fn launch(
        &self,
        k: K,
        l: Launch,
        bufs: &[&Borrowed<'_>],
        args: &[&dyn Arg],
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.launch_2d(k, l, 1, bufs, args) }
    }

    /// [`Self::launch`] on a grid of `l.grid x grid_y` blocks.
    ///
    /// # Safety
    /// As [`Self::launch`], for every block of the grid.
    pub(super) unsafe fn launch_2d(
        &self,
        k: K,
        l: Launch,
        grid_y: u32,
        bufs: &[&Borrowed<'_>],
        args: &[&dyn Arg],
    ) -> Result<()> {
        let stream = same_stream(bufs)?;
        let mut params: Vec<*mut c_void> = args.iter().map(|a| a.ptr()).collect();
        // SAFETY: the caller's contract; `params` points at values alive for the call.
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.f[k as usize].cu_function(),
                (l.grid, grid_y, 1),
                (l.block, 1, 1),
                l.shared,
                stream,
                &mut params,
            )
        }
        .map_err(driver(ENTRY_POINTS[k as usize]))
    }

    /// `dst[r] = src[idx[r]]` for `rows` rows of `cols` bf16 (zeros where `idx[r]` is not a row
    /// of `src`).
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
        let src_rows = int(src.len() / cols, "source rows")?;
        let (d, s, i, n) = (dst.addr(), src.addr(), idx.addr(), int(rows, "rows")?);
        // SAFETY: gather_rows(Vec8*, const Vec8*, const int*, int, int, int, int); dst holds rows
        // x cols, idx rows entries; the kernel reads only rows of src below src_rows, which src
        // holds.
        unsafe {
            self.launch(
                K::Gather,
                l,
                &[dst, src, idx],
                &[&d, &s, &i, &n, &src_rows, &vpr, &rpb],
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
        u: Option<&Borrowed<'_>>,
        n: usize,
        gelu: bool,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let mut bufs = vec![y, g];
        bufs.extend(u);
        for (b, what) in bufs.iter().zip(["output", "gate", "up"]) {
            b.holds(n, what)?;
            b.is_elem(2, what)?;
        }
        let (yy, gg, uu) = (y.addr(), g.addr(), u.map_or(0, |u| u.addr()));
        let (nn, act) = (n as i64, i32::from(gelu));
        let l = Launch {
            grid: n.div_ceil(256).clamp(1, 65_536) as u32,
            block: 256,
            shared: 0,
        };
        // SAFETY: gated_act(u16*, const u16*, const u16* (null: no up), i64, int); sizes
        // checked above.
        unsafe { self.launch(K::Gated, l, &bufs, &[&yy, &gg, &uu, &nn, &act]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_once_in_the_source() {
        // The name each `extern "C" __global__ void` definition gives, past an optional
        // `__launch_bounds__(..)` between the return type and the name.
        let defined: Vec<&str> = SOURCE
            .split("extern \"C\" __global__")
            .skip(1)
            .map(|def| {
                let mut rest = def
                    .trim_start()
                    .strip_prefix("void")
                    .expect("kernels return void");
                rest = rest.trim_start();
                if let Some(bounds) = rest.strip_prefix("__launch_bounds__(") {
                    let close = bounds.find(')').expect("launch bounds close");
                    rest = &bounds[close + 1..];
                }
                rest.trim_start()
                    .split('(')
                    .next()
                    .unwrap_or_default()
                    .trim()
            })
            .collect();
        for name in ENTRY_POINTS {
            let times = defined.iter().filter(|d| **d == name).count();
            assert_eq!(times, 1, "{name} is defined {times} times");
        }
        assert_eq!(defined.len(), ENTRY_POINTS.len(), "{defined:?}");
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
