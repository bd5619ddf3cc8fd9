
// ---------------------------------------------------------------------------------------------
// moe-opt: the grouped expert GEMM (appended after attention.cu: its cp.async / ldmatrix / mma
// helpers apply). C[rows, N] = A[rows, K] @ B[e][K, N] where rows [off[e], off[e + 1]) of A and C
// belong to expert e (routed rows sorted by expert), bf16 in and out, fp32 accumulation.
//
// Expert offsets stay on the device: grouped_tiles turns them into a table of 128-row tiles
// (expert, first row, end row; expert -1 past the last tile), and grouped_gemm runs one block per (tile,
// 128 columns) — one launch per projection, no host read. A block of 8 warps (2 x 4, each 64 x 32)
// walks K in steps of 32 through a 3-stage cp.async pipeline into XOR-swizzled shared memory
// (A rows of 64 bytes: chunk c at c ^ ((r / 2) % 4); B rows of 256 bytes: c ^ (r % 8)), reading
// fragments with ldmatrix (B transposed) into mma.m16n8k16. Rows are clamped to [0, rows] and
// experts to [0, experts), so no offsets or table can make it read or write outside A, B or C. The host checks N % 128 == 0,
// K % 32 == 0 and 16-byte alignment.

#define GG_BM 128
#define GG_BN 128
#define GG_BK 32
#define GG_STAGES 3
#define GG_THREADS 256

__device__ __forceinline__ int swz_a(int row, int col) {
    return row * GG_BK + (((col >> 3) ^ ((row >> 1) & 3)) << 3) + (col & 7);
}
__device__ __forceinline__ int swz_b(int row, int col) {
    return row * GG_BN + (((col >> 3) ^ (row & 7)) << 3) + (col & 7);
}

// One block: entry i of the table is tile i's (expert, first row, end row) — expert -1 past the
// last tile. Expert e's rows are [lo(e), hi(e)) with offsets clamped to [0, rows] and made
// non-decreasing.
extern "C" __global__ void grouped_tiles(int* __restrict__ table, const int* __restrict__ off,
                                         int experts, int rows, int max_tiles) {
    __shared__ int bound[MAX_EXPERTS + 1];
    __shared__ int start[MAX_EXPERTS + 1];
    for (int e = threadIdx.x; e <= experts; e += blockDim.x) bound[e] = min(max(off[e], 0), rows);
    __syncthreads();
    if (threadIdx.x == 0) {
        int acc = 0;
        for (int e = 0; e < experts; ++e) {
            bound[e + 1] = max(bound[e + 1], bound[e]);
            start[e] = acc;
            acc += (bound[e + 1] - bound[e] + GG_BM - 1) / GG_BM;
        }
        start[experts] = acc;
    }
    __syncthreads();
    const int total = start[experts];
    for (int i = threadIdx.x; i < max_tiles; i += blockDim.x) {
        int e = -1, r0 = 0, r1 = 0;
        if (i < total) {
            int lo = 0, hi = experts;  // the largest e with start[e] <= i
            while (hi - lo > 1) {
                int mid = (lo + hi) >> 1;
                if (start[mid] <= i) lo = mid; else hi = mid;
            }
            e = lo;
            r0 = bound[e] + (i - start[e]) * GG_BM;
            r1 = bound[e + 1];
        }
        table[3 * i] = e;
        table[3 * i + 1] = r0;
        table[3 * i + 2] = r1;
    }
}

template <int N>
__device__ __forceinline__ void cp_async_wait_n() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

extern "C" __global__ void __launch_bounds__(GG_THREADS)
    grouped_gemm(u16* __restrict__ c, const u16* __restrict__ a, const u16* __restrict__ b,
                 const int* __restrict__ table, int experts, int rows,
                 int n_cols, int k_dim) {
    __shared__ __align__(128) u16 sa[GG_STAGES][GG_BM * GG_BK];
    __shared__ __align__(128) u16 sb[GG_STAGES][GG_BK * GG_BN];
    const int tile = blockIdx.y;
    const int e = table[3 * tile];
    if (e < 0 || e >= experts) return;
    // The table is made by grouped_tiles; clamped again so that no table can send a block
    // outside A or C.
    const int r_end = min(max(table[3 * tile + 2], 0), rows);
    const int r0 = max(table[3 * tile + 1], 0);
    if (r0 >= r_end) return;
    const int n0 = blockIdx.x * GG_BN;
    const u16* bb = b + (i64)e * k_dim * n_cols;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = warp >> 2, wn = warp & 3;
    const int ktiles = k_dim / GG_BK;

    auto load = [&](int stage, int kt) {
        const int k0 = kt * GG_BK;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            int ci = threadIdx.x + i * GG_THREADS;
            int r = ci >> 2, ch = ci & 3;
            int row = r0 + r;
            bool ok = row < r_end;
            const u16* src = a + (ok ? (i64)row * k_dim : 0) + k0 + ch * 8;
            cp_async16(smem_u32(&sa[stage][swz_a(r, ch * 8)]), src, ok);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            int ci = threadIdx.x + i * GG_THREADS;
            int r = ci >> 4, ch = ci & 15;
            const u16* src = bb + (i64)(k0 + r) * n_cols + n0 + ch * 8;
            cp_async16(smem_u32(&sb[stage][swz_b(r, ch * 8)]), src, true);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;

#pragma unroll
    for (int s = 0; s < GG_STAGES - 1; ++s) {
        if (s < ktiles) load(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait_n<GG_STAGES - 2>();
        __syncthreads();
        const int nk = kt + GG_STAGES - 1;
        if (nk < ktiles) load(nk % GG_STAGES, nk);
        cp_async_commit();
        const u16* A = sa[kt % GG_STAGES];
        const u16* B = sb[kt % GG_STAGES];
#pragma unroll
        for (int ks = 0; ks < GG_BK / 16; ++ks) {
            u32 af[4][4], bf[4][2];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int row = wm * 64 + i * 16 + (lane & 15), col = ks * 16 + (lane >> 4) * 8;
                ldsm_x4(af[i][0], af[i][1], af[i][2], af[i][3], smem_u32(A + swz_a(row, col)));
            }
#pragma unroll
            for (int p = 0; p < 2; ++p) {
                int m = lane >> 3;
                int kk = ks * 16 + (m & 1) * 8 + (lane & 7), nn = wn * 32 + p * 16 + (m >> 1) * 8;
                ldsm_x4_t(bf[2 * p][0], bf[2 * p][1], bf[2 * p + 1][0], bf[2 * p + 1][1],
                          smem_u32(B + swz_b(kk, nn)));
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_bf16(acc[i][j], af[i], bf[j][0], bf[j][1]);
        }
    }
    cp_async_wait_all();

    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int row = r0 + wm * 64 + i * 16 + g;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int col = n0 + wn * 32 + j * 8 + 2 * t;
            if (row < r_end)
                *(u32*)(c + (i64)row * n_cols + col) = pack_bf16(acc[i][j][0], acc[i][j][1]);
            if (row + 8 < r_end)
                *(u32*)(c + (i64)(row + 8) * n_cols + col) = pack_bf16(acc[i][j][2], acc[i][j][3]);
        }
    }
}
