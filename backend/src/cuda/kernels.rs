//! The CUDA path's own kernels (`kernels.cu`): NVRTC compiles them at run time for the device's
//! architecture; this module launches them on raw device addresses.
//!
//! Row kernels (gather, combine) move 16-byte vectors, one output row written by one group of
//! threads, no atomics. The routing sort is a stable counting sort in three passes (per-chunk
//! counts with warp match masks, one scan, placement), also without atomics.

use super::device::Gpu;
use super::error::{driver, CudaError, Result};
use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
use std::sync::Arc;

/// The kernel source.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Entries per block of the routing sort (`CHUNK` in the source).
pub const SORT_CHUNK: usize = 256;
/// Warps per routing-sort block (`WARPS` in the source).
pub const SORT_WARPS: usize = SORT_CHUNK / 32;
/// Largest top-k the router and the combine handle (`MAX_TOPK` in the source).
pub const MAX_TOPK: usize = 8;
/// Threads of the single routing-scan block (the size of its shared array).
pub const SCAN_THREADS: u32 = 1024;
/// bf16 elements per 16-byte vector.
pub const VEC: usize = 8;
/// Threads per block of the row kernels.
pub const ROW_THREADS: usize = 256;

/// The entry points of [`SOURCE`], in the order [`Kernels`] loads them.
pub const ENTRY_POINTS: [&str; 11] = [
    "gather_rows",
    "combine_rows",
    "route_topk",
    "route_count",
    "route_scan",
    "route_place",
    "slots_range",
    "slots_capacity",
    "dispatch_index",
    "gelu_inplace",
    "fill_uniform",
];

/// Indices into [`ENTRY_POINTS`] (and [`Kernels`]' functions).
#[derive(Debug, Clone, Copy)]
enum K {
    Gather = 0,
    Combine = 1,
    RouteTopk = 2,
    RouteCount = 3,
    RouteScan = 4,
    RoutePlace = 5,
    SlotsRange = 6,
    SlotsCapacity = 7,
    DispatchIndex = 8,
    Gelu = 9,
    Fill = 10,
}

/// Launch geometry of a row kernel over `rows` rows of `cols` bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowGeometry {
    /// 16-byte vectors per row.
    pub vpr: usize,
    /// Rows per block (several when a row is shorter than a block).
    pub rpb: usize,
    /// Blocks.
    pub blocks: usize,
}

impl RowGeometry {
    /// The geometry for `rows` rows of `cols` bf16; `cols` must be a positive multiple of 8.
    pub fn new(rows: usize, cols: usize) -> Result<Self> {
        if cols == 0 || cols % VEC != 0 {
            return Err(CudaError::Invalid(format!(
                "rows of {cols} bf16: the row kernels need a positive multiple of {VEC}"
            )));
        }
        if rows > i32::MAX as usize {
            return Err(CudaError::Invalid(format!(
                "{rows} rows: at most {}",
                i32::MAX
            )));
        }
        let vpr = cols / VEC;
        let rpb = (ROW_THREADS / vpr).max(1);
        Ok(Self {
            vpr,
            rpb,
            blocks: rows.div_ceil(rpb),
        })
    }

    fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.blocks.max(1) as u32, 1, 1),
            block_dim: (ROW_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// Blocks of the routing sort over `entries` entries.
pub fn sort_chunks(entries: usize) -> usize {
    entries.div_ceil(SORT_CHUNK).max(1)
}

/// Shared memory of a routing-sort block for `experts` experts.
pub fn sort_shared_bytes(experts: usize) -> usize {
    SORT_WARPS * experts * 4
}

/// One thread per element, 256 per block.
fn flat(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride launch of at most `max_blocks` blocks of 256 threads.
fn strided(n: usize, max_blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, max_blocks) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Invalid(format!("{what} = {v} exceeds i32")))
}

/// The kernels, loaded on one GPU.
#[derive(Debug)]
pub struct Kernels {
    _module: Arc<CudaModule>,
    f: Vec<CudaFunction>,
    stream: Arc<cudarc::driver::CudaStream>,
}

/// Where the routing sort of one set of tokens reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct SortBuffers {
    /// [entries] i32: each entry's expert (input).
    pub expert: u64,
    /// [experts * chunks] i32 scratch.
    pub counts: u64,
    /// [experts * chunks + 1] i32 scratch.
    pub offsets: u64,
    /// [experts + 1] i32: first sorted position of each expert, then the total.
    pub expert_off: u64,
    /// [entries] i32: the token of each sorted position.
    pub sorted_token: u64,
    /// [entries] i32: the sorted position of each entry.
    pub entry_pos: u64,
}

impl Kernels {
    /// Compiles [`SOURCE`] for `gpu`'s architecture and loads every entry point.
    pub fn load(gpu: &Gpu) -> Result<Self> {
        let ptx = compile(gpu.compute_capability()?)?;
        gpu.bind()?;
        let module = gpu
            .context()
            .load_module(ptx)
            .map_err(driver("cuModuleLoadData"))?;
        let f = ENTRY_POINTS
            .iter()
            .map(|name| {
                module
                    .load_function(name)
                    .map_err(driver("cuModuleGetFunction"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            _module: module,
            f,
            stream: gpu.stream().clone(),
        })
    }

    fn func(&self, k: K) -> &CudaFunction {
        &self.f[k as usize]
    }

    /// `dst[r] = src[idx[r]]` for `rows` rows of `cols` bf16 (zeros where `idx[r] < 0`).
    pub fn gather_rows(
        &self,
        dst: u64,
        src: u64,
        idx: u64,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        aligned(&[("gather dst", dst), ("gather src", src)])?;
        let g = RowGeometry::new(rows, cols)?;
        let (rows, vpr, rpb) = (rows as i32, g.vpr as i32, g.rpb as i32);
        let mut b = self.stream.launch_builder(self.func(K::Gather));
        b.arg(&dst)
            .arg(&src)
            .arg(&idx)
            .arg(&rows)
            .arg(&vpr)
            .arg(&rpb);
        // SAFETY: the addresses are live device buffers of the sizes the caller states; the kernel
        // reads `rows` indices and writes `rows * cols` elements of dst.
        unsafe { b.launch(g.config()) }.map_err(driver("cuLaunchKernel(gather_rows)"))?;
        Ok(())
    }

    /// `out[t] = sum_j weight[t*k+j] * src[slot[t*k+j]]` over `slot >= 0`, `rows` rows of `cols`.
    #[allow(clippy::too_many_arguments)]
    pub fn combine_rows(
        &self,
        out: u64,
        src: u64,
        slot: u64,
        weight: u64,
        rows: usize,
        k: usize,
        cols: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        check_topk(k)?;
        aligned(&[("combine out", out), ("combine src", src)])?;
        let g = RowGeometry::new(rows, cols)?;
        let (rows, k, vpr, rpb) = (rows as i32, k as i32, g.vpr as i32, g.rpb as i32);
        let mut b = self.stream.launch_builder(self.func(K::Combine));
        b.arg(&out).arg(&src).arg(&slot).arg(&weight);
        b.arg(&rows).arg(&k).arg(&vpr).arg(&rpb);
        // SAFETY: as gather_rows; slot and weight hold rows * k entries.
        unsafe { b.launch(g.config()) }.map_err(driver("cuLaunchKernel(combine_rows)"))?;
        Ok(())
    }

    /// Router: top-`k` of the softmax of `logits` ([tokens, experts] bf16).
    #[allow(clippy::too_many_arguments)]
    pub fn route_topk(
        &self,
        logits: u64,
        tokens: usize,
        experts: usize,
        k: usize,
        renorm: bool,
        expert: u64,
        weight: u64,
    ) -> Result<()> {
        check_topk(k)?;
        if k > experts {
            return Err(CudaError::Invalid(format!("top-{k} of {experts} experts")));
        }
        let (n, e, kk, rn) = (
            int(tokens, "tokens")?,
            int(experts, "experts")?,
            k as i32,
            i32::from(renorm),
        );
        let mut b = self.stream.launch_builder(self.func(K::RouteTopk));
        b.arg(&logits)
            .arg(&n)
            .arg(&e)
            .arg(&kk)
            .arg(&rn)
            .arg(&expert)
            .arg(&weight);
        // SAFETY: logits holds tokens * experts bf16, expert and weight tokens * k entries.
        unsafe { b.launch(flat(tokens)) }.map_err(driver("cuLaunchKernel(route_topk)"))?;
        Ok(())
    }

    /// The stable routing sort of `entries` (token, k) entries over `experts` experts.
    pub fn route_sort(
        &self,
        s: &SortBuffers,
        entries: usize,
        experts: usize,
        k: usize,
    ) -> Result<()> {
        let chunks = sort_chunks(entries);
        let len = experts * chunks;
        let (total, e, kk, ch, ln) = (
            int(entries, "routing entries")?,
            int(experts, "experts")?,
            int(k, "top-k")?,
            int(chunks, "chunks")?,
            int(len, "experts x chunks")?,
        );
        let sorted = LaunchConfig {
            grid_dim: (chunks as u32, 1, 1),
            block_dim: (SORT_CHUNK as u32, 1, 1),
            shared_mem_bytes: sort_shared_bytes(experts) as u32,
        };
        let mut b = self.stream.launch_builder(self.func(K::RouteCount));
        b.arg(&s.expert).arg(&total).arg(&e).arg(&s.counts);
        // SAFETY: counts holds experts * chunks ints; expert holds `entries` ints.
        unsafe { b.launch(sorted) }.map_err(driver("cuLaunchKernel(route_count)"))?;
        let mut b = self.stream.launch_builder(self.func(K::RouteScan));
        b.arg(&s.counts)
            .arg(&ln)
            .arg(&ch)
            .arg(&e)
            .arg(&s.offsets)
            .arg(&s.expert_off);
        let one = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (SCAN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: offsets holds len + 1 ints, expert_off experts + 1.
        unsafe { b.launch(one) }.map_err(driver("cuLaunchKernel(route_scan)"))?;
        let mut b = self.stream.launch_builder(self.func(K::RoutePlace));
        b.arg(&s.expert)
            .arg(&total)
            .arg(&e)
            .arg(&kk)
            .arg(&s.offsets);
        b.arg(&s.sorted_token).arg(&s.entry_pos);
        // SAFETY: sorted_token and entry_pos hold `entries` ints.
        unsafe { b.launch(sorted) }.map_err(driver("cuLaunchKernel(route_place)"))?;
        Ok(())
    }

    /// PPMoE combine slots: entries of experts `[e_lo, e_hi)` point into this rank's output rows.
    pub fn slots_range(
        &self,
        entry_pos: u64,
        entries: usize,
        expert_off: u64,
        e_lo: usize,
        e_hi: usize,
        slot: u64,
    ) -> Result<()> {
        let (n, lo, hi) = (
            int(entries, "entries")?,
            int(e_lo, "expert")?,
            int(e_hi, "expert")?,
        );
        let mut b = self.stream.launch_builder(self.func(K::SlotsRange));
        b.arg(&entry_pos)
            .arg(&n)
            .arg(&expert_off)
            .arg(&lo)
            .arg(&hi)
            .arg(&slot);
        // SAFETY: entry_pos and slot hold `entries` ints, expert_off experts + 1.
        unsafe { b.launch(flat(entries)) }.map_err(driver("cuLaunchKernel(slots_range)"))?;
        Ok(())
    }

    /// All-to-all combine slots into the capacity buffer [experts, cap] (-1: dropped).
    pub fn slots_capacity(
        &self,
        expert: u64,
        entry_pos: u64,
        entries: usize,
        expert_off: u64,
        cap: usize,
        slot: u64,
    ) -> Result<()> {
        let (n, c) = (int(entries, "entries")?, int(cap, "capacity")?);
        let mut b = self.stream.launch_builder(self.func(K::SlotsCapacity));
        b.arg(&expert)
            .arg(&entry_pos)
            .arg(&n)
            .arg(&expert_off)
            .arg(&c)
            .arg(&slot);
        // SAFETY: expert, entry_pos and slot hold `entries` ints.
        unsafe { b.launch(flat(entries)) }.map_err(driver("cuLaunchKernel(slots_capacity)"))?;
        Ok(())
    }

    /// All-to-all dispatch index: the source token of each slot of [experts, cap] (-1: padding).
    pub fn dispatch_index(
        &self,
        sorted_token: u64,
        expert_off: u64,
        experts: usize,
        cap: usize,
        idx: u64,
    ) -> Result<()> {
        let (e, c) = (int(experts, "experts")?, int(cap, "capacity")?);
        int(experts * cap, "experts x capacity")?;
        let mut b = self.stream.launch_builder(self.func(K::DispatchIndex));
        b.arg(&sorted_token)
            .arg(&expert_off)
            .arg(&e)
            .arg(&c)
            .arg(&idx);
        // SAFETY: idx holds experts * cap ints.
        unsafe { b.launch(flat(experts * cap)) }
            .map_err(driver("cuLaunchKernel(dispatch_index)"))?;
        Ok(())
    }

    /// GELU in place on `n` bf16 (`n` a multiple of 8).
    pub fn gelu_inplace(&self, x: u64, n: usize) -> Result<()> {
        if n % VEC != 0 {
            return Err(CudaError::Invalid(format!(
                "gelu over {n} values: not a multiple of 8"
            )));
        }
        aligned(&[("gelu buffer", x)])?;
        let n8 = (n / VEC) as i64;
        let mut b = self.stream.launch_builder(self.func(K::Gelu));
        b.arg(&x).arg(&n8);
        // SAFETY: x holds n bf16.
        unsafe { b.launch(strided(n / VEC, 4096)) }.map_err(driver("cuLaunchKernel(gelu)"))?;
        Ok(())
    }

    /// Fills `n` bf16 at `dst` with seeded uniform values in `[-scale, scale)`; element `i` gets
    /// the value of global index `offset + i`.
    pub fn fill_uniform(
        &self,
        dst: u64,
        n: usize,
        seed: u64,
        offset: usize,
        scale: f32,
    ) -> Result<()> {
        let (nn, off) = (n as i64, offset as i64);
        let mut b = self.stream.launch_builder(self.func(K::Fill));
        b.arg(&dst).arg(&nn).arg(&seed).arg(&off).arg(&scale);
        // SAFETY: dst holds n bf16.
        unsafe { b.launch(strided(n, 8192)) }.map_err(driver("cuLaunchKernel(fill_uniform)"))?;
        Ok(())
    }
}

fn check_topk(k: usize) -> Result<()> {
    if k == 0 || k > MAX_TOPK {
        return Err(CudaError::Invalid(format!(
            "top-k = {k}: the kernels handle 1 to {MAX_TOPK}"
        )));
    }
    Ok(())
}

fn aligned(addrs: &[(&'static str, u64)]) -> Result<()> {
    for &(what, addr) in addrs {
        if addr % 16 != 0 {
            return Err(CudaError::Misaligned {
                what,
                addr,
                align: 16,
            });
        }
    }
    Ok(())
}

/// The NVRTC options for compute capability `cc`.
pub fn compile_options(cc: (i32, i32)) -> Vec<String> {
    vec![
        format!("--gpu-architecture=compute_{}{}", cc.0, cc.1),
        "--std=c++17".into(),
    ]
}

fn compile(cc: (i32, i32)) -> Result<cudarc::nvrtc::Ptx> {
    let options = compile_options(cc);
    let opts = CompileOptions {
        options: options.clone(),
        name: Some("moe_opt_kernels.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, opts).map_err(|e| match e {
        CompileError::CompileError { log, .. } => CudaError::Compile {
            options,
            log: log.to_string_lossy().into_owned(),
        },
        other => CudaError::Compile {
            options,
            log: format!("{other:?}"),
        },
    })
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
    }

    #[test]
    fn kernel_indices_follow_the_entry_points() {
        assert_eq!(ENTRY_POINTS[K::Gather as usize], "gather_rows");
        assert_eq!(ENTRY_POINTS[K::RoutePlace as usize], "route_place");
        assert_eq!(ENTRY_POINTS[K::Fill as usize], "fill_uniform");
        assert_eq!(K::Fill as usize, ENTRY_POINTS.len() - 1);
    }

    #[test]
    fn source_constants_match_the_host() {
        assert!(SOURCE.contains(&format!("#define CHUNK {SORT_CHUNK}")));
        assert!(SOURCE.contains(&format!("#define MAX_TOPK {MAX_TOPK}")));
        assert!(SOURCE.contains(&format!("__shared__ int part[{SCAN_THREADS}]")));
    }

    /// The source without `//` comments.
    fn code() -> String {
        SOURCE
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn hot_path_kernels_use_no_atomics() {
        assert!(!code().contains("atomic"));
    }

    #[test]
    fn braces_and_parentheses_balance() {
        let code = code();
        let count = |c: char| code.chars().filter(|&x| x == c).count();
        assert_eq!(count('{'), count('}'));
        assert_eq!(count('('), count(')'));
    }

    #[test]
    fn row_geometry_covers_every_row() {
        let g = RowGeometry::new(16384, 4096).expect("valid");
        assert_eq!((g.vpr, g.rpb, g.blocks), (512, 1, 16384));
        let g = RowGeometry::new(1000, 64).expect("valid");
        assert_eq!((g.vpr, g.rpb), (8, 32));
        assert!(g.blocks * g.rpb >= 1000);
        assert_eq!(g.blocks, 32);
        assert!(RowGeometry::new(10, 12).is_err());
        assert!(RowGeometry::new(10, 0).is_err());
    }

    #[test]
    fn sort_launch_sizes() {
        assert_eq!(sort_chunks(32768), 128);
        assert_eq!(sort_chunks(1), 1);
        assert_eq!(sort_chunks(0), 1);
        assert_eq!(sort_shared_bytes(8), 256);
    }

    /// Compiles the kernels for Hopper when libnvrtc can be loaded (no GPU needed), so source
    /// errors show on a development machine; says so and passes where NVRTC is absent.
    #[test]
    fn compiles_with_nvrtc_where_available() {
        if let Err(e) = super::super::libs::load("nvrtc") {
            eprintln!("NVRTC not found, kernel compilation not checked: {e}");
            return;
        }
        match compile((9, 0)) {
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn options_name_a_virtual_architecture() {
        assert_eq!(compile_options((9, 0))[0], "--gpu-architecture=compute_90");
    }
}
