//! The grouped expert GEMM's launches (`grouped.cu`): the tile table from device offsets, then one
//! launch per projection over routed rows sorted by expert.

use super::buffer::Borrowed;
use super::error::{CudaError, Result};
use super::ops::{int, widths, Launch, Ops, K, MAX_EXPERTS};

/// Rows per tile (`GG_BM`), columns per tile (`GG_BN`), K per step (`GG_BK`).
const BM: usize = 128;
const BN: usize = 128;
const BK: usize = 32;

/// A grouped GEMM's sizes: `rows` routed rows over `experts`, `[rows, k] @ [experts, k, n]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupedArgs {
    pub rows: usize,
    pub experts: usize,
    pub n: usize,
    pub k: usize,
}

impl GroupedArgs {
    /// Entries of the tile table: every expert's last tile may be partial.
    pub fn max_tiles(&self) -> usize {
        self.rows.div_ceil(BM) + self.experts
    }

    /// i32 words of the tile table.
    pub fn table_len(&self) -> usize {
        3 * self.max_tiles()
    }
}

impl Ops {
    /// Whether the grouped kernel takes these sizes (else cuBLAS runs them).
    pub fn grouped_takes(experts: usize, n: usize, k: usize) -> bool {
        (1..=MAX_EXPERTS).contains(&experts) && n % BN == 0 && k % BK == 0 && n > 0 && k > 0
    }

    /// The tile table of expert offsets `off` (i32 `[experts + 1]`, on the device) into `table`
    /// (i32 `[3 * max_tiles]`).
    pub fn grouped_tiles(
        &self,
        table: &Borrowed<'_>,
        off: &Borrowed<'_>,
        a: GroupedArgs,
    ) -> Result<()> {
        if !Ops::grouped_takes(a.experts, a.n, a.k) {
            return Err(CudaError::Invalid(format!(
                "the grouped GEMM does not take {a:?}"
            )));
        }
        off.holds(a.experts + 1, "expert offsets")?;
        table.holds(a.table_len(), "grouped GEMM tile table")?;
        widths(&[
            (off, 4, "expert offsets"),
            (table, 4, "grouped GEMM tile table"),
        ])?;
        let (t, o) = (table.addr(), off.addr());
        let (e, r, m) = (
            int(a.experts, "experts")?,
            int(a.rows, "rows")?,
            int(a.max_tiles(), "tiles")?,
        );
        let l = Launch {
            grid: 1,
            block: 512,
            shared: 0,
        };
        // SAFETY: grouped_tiles(int*, const int*, int, int, int); `off` holds experts + 1 entries
        // (experts <= MAX_EXPERTS, the kernel's shared arrays) and `table` 3 * max_tiles.
        unsafe { self.launch(K::GroupedTiles, l, &[table, off], &[&t, &o, &e, &r, &m]) }
    }

    /// `c[rows, n] = a[rows, k] @ b[e][k, n]` over the tiles of `table` (bf16, fp32 accumulation).
    pub fn grouped_gemm(
        &self,
        c: &Borrowed<'_>,
        a: &Borrowed<'_>,
        b: &Borrowed<'_>,
        table: &Borrowed<'_>,
        g: GroupedArgs,
    ) -> Result<()> {
        if g.rows == 0 {
            return Ok(());
        }
        if !Ops::grouped_takes(g.experts, g.n, g.k) {
            return Err(CudaError::Invalid(format!(
                "the grouped GEMM does not take {g:?}"
            )));
        }
        a.holds(g.rows * g.k, "grouped GEMM A")?;
        b.holds(g.experts * g.k * g.n, "grouped GEMM B")?;
        c.holds(g.rows * g.n, "grouped GEMM C")?;
        table.holds(g.table_len(), "grouped GEMM tile table")?;
        widths(&[
            (a, 2, "grouped GEMM A"),
            (b, 2, "grouped GEMM B"),
            (c, 2, "grouped GEMM C"),
            (table, 4, "grouped GEMM tile table"),
        ])?;
        for (x, what) in [
            (a, "grouped GEMM A"),
            (b, "grouped GEMM B"),
            (c, "grouped GEMM C"),
        ] {
            x.aligned(what, 16)?;
        }
        let tiles = u32::try_from(g.max_tiles())
            .ok()
            .filter(|&t| t <= 65_535)
            .ok_or_else(|| {
                CudaError::Invalid(format!("{} row tiles exceed a grid", g.max_tiles()))
            })?;
        let (cc, aa, bb, tt) = (c.addr(), a.addr(), b.addr(), table.addr());
        let (e, r, n, k) = (
            int(g.experts, "experts")?,
            int(g.rows, "rows")?,
            int(g.n, "n")?,
            int(g.k, "k")?,
        );
        let l = Launch {
            grid: (g.n / BN) as u32,
            block: 256,
            shared: 0,
        };
        // SAFETY: grouped_gemm(u16*, const u16*, const u16*, const int*, int x4); a holds rows x
        // k, b experts x k x n, c rows x n (checked above); the kernel clamps every row and
        // expert it reads from the table to [0, rows) and [0, experts), and n % 128 == 0,
        // k % 32 == 0 keep its tiles inside the rows.
        unsafe {
            self.launch_2d(
                K::GroupedGemm,
                l,
                tiles,
                &[c, a, b, table],
                &[&cc, &aa, &bb, &tt, &e, &r, &n, &k],
            )
        }
    }
}
