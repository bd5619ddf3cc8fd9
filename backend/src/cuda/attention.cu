// moe-opt: attention kernels (appended to ops.cu's source: its typedefs and bf16 helpers apply).
// RoPE, the materialised-scores softmax (shapes the fused kernel does not take), and the fused
// flash-style causal attention.

// RoPE on one op's heads (bf16 in, bf16 out, fp32 math): x is [rows, heads * d] row-major,
// row r at position r % seq; the last rd dims of every head turn, dim j (0-based within them)
// becoming x[j] cos + sign(j) x[partner(j)] sin of the angle pos * inv_freq[freq(j)], cos and sin
// times cs_scale; pairs 0 ("halves": j with j +- rd/2) or 1 ("interleaved": 2i with 2i + 1).
// The first d - rd dims are copied.
extern "C" __global__ void rope(u16* __restrict__ y, const u16* __restrict__ x,
                                const float* __restrict__ inv_freq, int rows, int heads, int d,
                                int rd, int seq, int pairs, float cs_scale) {
    i64 n = (i64)rows * heads * d;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (i64)gridDim.x * blockDim.x) {
        int c = (int)(e % d);
        i64 head0 = e - c;
        int lead = d - rd;
        if (c < lead) {
            y[e] = x[e];
            continue;
        }
        int j = c - lead;
        int half = rd / 2;
        int freq, partner;
        float sign;
        if (pairs == 0) {
            freq = j < half ? j : j - half;
            partner = j < half ? j + half : j - half;
            sign = j < half ? -1.0f : 1.0f;
        } else {
            freq = j / 2;
            partner = j ^ 1;
            sign = (j & 1) ? 1.0f : -1.0f;
        }
        int row = (int)(e / ((i64)heads * d));
        float angle = (float)(row % seq) * inv_freq[freq];
        float cs = cosf(angle) * cs_scale;
        float sn = sinf(angle) * cs_scale;
        float v = bf16_to_f32(x[e]) * cs + sign * bf16_to_f32(x[head0 + lead + partner]) * sn;
        y[e] = (u16)f32_to_bf16(v);
    }
}

// Softmax of attention scores, one block per row: s is fp32 [bh, seq, kv] (already scaled),
// row r = (bh, i); head h = bh % heads. Keys j the mask hides get probability 0: mask 0 full,
// 1 causal (j <= i), 2 sliding window w (j <= i, i - j < w), 3 chunked c (j <= i, same chunk).
// sinks (bf16 [heads], may be null) add exp(sink) to the denominator only. p is bf16.
extern "C" __global__ void softmax_rows(u16* __restrict__ p, const float* __restrict__ s,
                                        const u16* __restrict__ sinks, int rows, int seq, int kv,
                                        int heads, int mask, int w) {
    __shared__ float red[32];
    int r = blockIdx.x;
    if (r >= rows) return;
    int i = r % seq;
    int h = (r / seq) % heads;
    const float* row = s + (i64)r * kv;
    u16* out = p + (i64)r * kv;
    int limit = kv;
    int first = 0;
    if (mask >= 1) limit = min(kv, i + 1);
    if (mask == 2) first = max(0, i - w + 1);
    if (mask == 3) first = (i / w) * w;
    float mx = -3.402823466e38f;
    for (int j = first + threadIdx.x; j < limit; j += blockDim.x) mx = fmaxf(mx, row[j]);
    float sink = sinks ? bf16_to_f32(sinks[h]) : -3.402823466e38f;
    mx = fmaxf(mx, sink);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : -3.402823466e38f;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    mx = red[0];
    __syncthreads();
    float sum = 0.0f;
    for (int j = first + threadIdx.x; j < limit; j += blockDim.x) sum += expf(row[j] - mx);
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) red[0] = v + (sinks ? expf(sink - mx) : 0.0f);
    }
    __syncthreads();
    float inv = 1.0f / red[0];
    for (int j = threadIdx.x; j < kv; j += blockDim.x) {
        float v = (j >= first && j < limit) ? expf(row[j] - mx) * inv : 0.0f;
        out[j] = (u16)f32_to_bf16(v);
    }
}


// ---------------------------------------------------------------------------------------------
// Fused attention (flash-attention 2 style), bf16 in and out, fp32 softmax and accumulation.
//
// One block of 4 warps takes FA_BM = 64 queries of one head of one sequence (each warp 16 rows)
// and walks the key blocks of FA_BN = 64 that its mask lets it see: S = Q K^T with
// mma.m16n8k16 (bf16 in, fp32 out), the online softmax in registers (exp2 of log2e-scaled
// scores), P rounded to bf16 and O += P V with the same mma, O / l stored once. K and V tiles are
// loaded with cp.async into XOR-swizzled shared memory (16-byte chunk c of row r at c ^ (r % 8),
// so ldmatrix reads 8 rows without bank conflicts): V of block j loads while S of block j is
// computed, K of block j + 1 while O accumulates block j.
//
// Layouts as the materialised path's: q [b * seq, hl * D], k [b * kv, kvl * D], v [b * kv, kvl * D],
// out [b * seq, hl * D], row-major; query head h reads kv head (first_head + h) / group -
// first_kv_head. Masks as softmax_rows: 0 full, 1 causal (j <= i), 2 sliding window w, 3 chunked
// w; sinks (bf16 [hl], may be null) add exp(sink) to the denominator only. The host checks D in
// {64, 128}, 16-byte aligned buffers and the sizes.

#define FA_BM 64
#define FA_BN 64
#define FA_THREADS 128
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ u32 smem_u32(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, zero-filled when !ok (src is then not read).
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool ok) {
    int n = ok ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

__device__ __forceinline__ void ldsm_x4(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// c (16 x 8 fp32) += a (16 x 16 bf16, row) * b (16 x 8 bf16, col).
__device__ __forceinline__ void mma_bf16(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Element offset of (row, col) in a swizzled tile of rows of D bf16.
template <int D>
__device__ __forceinline__ int swz(int row, int col) {
    return row * D + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

// Rows [r0, r0 + 64) of a [*, ld] matrix at base (rows >= limit zero-filled) into a tile.
template <int D>
__device__ __forceinline__ void load_tile(u16* tile, const u16* base, i64 ld, int r0, int limit) {
    constexpr int CH = D / 8;
    for (int c = threadIdx.x; c < FA_BN * CH; c += FA_THREADS) {
        int r = c / CH, ch = c % CH;
        bool ok = r0 + r < limit;
        const u16* src = base + (ok ? (i64)(r0 + r) * ld : 0) + ch * 8;
        cp_async16(smem_u32(tile + swz<D>(r, ch * 8)), src, ok);
    }
}

// Whether query i sees key j under the mask.
__device__ __forceinline__ bool visible(int i, int j, int mask, int w) {
    if (mask == 0) return true;
    if (j > i) return false;
    if (mask == 2) return i - j < w;
    if (mask == 3) return j >= (i / w) * w;
    return true;
}

template <int D>
__device__ __forceinline__ void flash_attn(u16* __restrict__ out, const u16* __restrict__ q,
                                           const u16* __restrict__ k, const u16* __restrict__ v,
                                           const u16* __restrict__ sinks, int seq, int kv, int hl,
                                           int kvl, int first_head, int group, int first_kv_head,
                                           float scale, int mask, int w) {
    __shared__ __align__(128) u16 sq[FA_BM * D];
    __shared__ __align__(128) u16 sk[FA_BN * D];
    __shared__ __align__(128) u16 sv[FA_BN * D];
    const int nqb = (seq + FA_BM - 1) / FA_BM;
    // Heaviest (latest) query blocks first: causal work grows with the block index.
    const int qb = nqb - 1 - (int)(blockIdx.x % nqb);
    const int h = (int)((blockIdx.x / nqb) % hl);
    const int bz = (int)(blockIdx.x / ((unsigned)nqb * hl));
    const int kvh = (first_head + h) / group - first_kv_head;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int q0 = qb * FA_BM;
    const i64 ldq = (i64)hl * D, ldk = (i64)kvl * D;
    const u16* qbase = q + (i64)bz * seq * ldq + (i64)h * D;
    const u16* kbase = k + (i64)bz * kv * ldk + (i64)kvh * D;
    const u16* vbase = v + (i64)bz * kv * ldk + (i64)kvh * D;
    // The keys any query of this block may see: [lo, hi).
    const int q_last = min(q0 + FA_BM, seq) - 1;
    int lo = 0, hi = kv;
    if (mask >= 1) hi = min(kv, q_last + 1);
    if (mask == 2) lo = max(0, q0 - w + 1);
    if (mask == 3) lo = (q0 / w) * w;
    const int jb0 = lo / FA_BN, jb1 = (hi + FA_BN - 1) / FA_BN;

    {
        constexpr int CH = D / 8;
        for (int c = threadIdx.x; c < FA_BM * CH; c += FA_THREADS) {
            int r = c / CH, ch = c % CH;
            bool ok = q0 + r < seq;
            const u16* src = qbase + (ok ? (i64)(q0 + r) * ldq : 0) + ch * 8;
            cp_async16(smem_u32(sq + swz<D>(r, ch * 8)), src, ok);
        }
    }
    if (jb0 < jb1) load_tile<D>(sk, kbase, ldk, jb0 * FA_BN, kv);
    cp_async_commit();

    u32 qf[D / 16][4];
    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.0f, 0.0f};
    const float sl2 = scale * LOG2E;
    const int row_a = q0 + warp * 16 + g;  // this thread's rows: row_a and row_a + 8

    for (int jb = jb0; jb < jb1; ++jb) {
        cp_async_wait_all();
        __syncthreads();
        if (jb == jb0) {
#pragma unroll
            for (int ks = 0; ks < D / 16; ++ks) {
                int row = warp * 16 + (lane & 15), col = ks * 16 + (lane >> 4) * 8;
                ldsm_x4(qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], smem_u32(sq + swz<D>(row, col)));
            }
        }
        load_tile<D>(sv, vbase, ldk, jb * FA_BN, kv);
        cp_async_commit();

        float s[FA_BN / 8][4];
#pragma unroll
        for (int i = 0; i < FA_BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
            for (int n2 = 0; n2 < FA_BN / 16; ++n2) {
                int m = lane >> 3;
                int key = n2 * 16 + (m >> 1) * 8 + (lane & 7), d = ks * 16 + (m & 1) * 8;
                u32 b0, b1, b2, b3;
                ldsm_x4(b0, b1, b2, b3, smem_u32(sk + swz<D>(key, d)));
                mma_bf16(s[2 * n2], qf[ks], b0, b1);
                mma_bf16(s[2 * n2 + 1], qf[ks], b2, b3);
            }
        }
        const int j0 = jb * FA_BN;
        const bool edge = j0 + FA_BN > kv || mask >= 2 || (mask == 1 && j0 + FA_BN - 1 > q0);
#pragma unroll
        for (int nt = 0; nt < FA_BN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = s[nt][e] * sl2;
                if (edge) {
                    int i = row_a + (e >> 1) * 8, j = j0 + nt * 8 + 2 * t + (e & 1);
                    if (j >= kv || !visible(i, j, mask, w)) x = -INFINITY;
                }
                s[nt][e] = x;
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < FA_BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float m_new = fmaxf(m_r[r], mx);
            float base = m_new == -INFINITY ? 0.0f : m_new;
            float alpha = exp2f(m_r[r] - base);
            m_r[r] = m_new;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < FA_BN / 8; ++nt) {
                float p0 = exp2f(s[nt][2 * r] - base), p1 = exp2f(s[nt][2 * r + 1] - base);
                s[nt][2 * r] = p0;
                s[nt][2 * r + 1] = p1;
                sum += p0 + p1;
            }
            l_r[r] = l_r[r] * alpha + sum;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt) {
                o[dt][2 * r] *= alpha;
                o[dt][2 * r + 1] *= alpha;
            }
        }

        cp_async_wait_all();
        __syncthreads();
        if (jb + 1 < jb1) load_tile<D>(sk, kbase, ldk, (jb + 1) * FA_BN, kv);
        cp_async_commit();

#pragma unroll
        for (int ks = 0; ks < FA_BN / 16; ++ks) {
            u32 a[4] = {pack_bf16(s[2 * ks][0], s[2 * ks][1]), pack_bf16(s[2 * ks][2], s[2 * ks][3]),
                        pack_bf16(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                        pack_bf16(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
            for (int d2 = 0; d2 < D / 16; ++d2) {
                int m = lane >> 3;
                int key = ks * 16 + (m & 1) * 8 + (lane & 7), d = d2 * 16 + (m >> 1) * 8;
                u32 b0, b1, b2, b3;
                ldsm_x4_t(b0, b1, b2, b3, smem_u32(sv + swz<D>(key, d)));
                mma_bf16(o[2 * d2], a, b0, b1);
                mma_bf16(o[2 * d2 + 1], a, b2, b3);
            }
        }
    }
    cp_async_wait_all();

    const float sink = sinks ? bf16_to_f32(sinks[h]) * LOG2E : -INFINITY;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = l_r[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        float f = 1.0f;
        if (sinks) {
            float m_f = fmaxf(m_r[r], sink);
            f = m_r[r] == -INFINITY ? 0.0f : exp2f(m_r[r] - m_f);
            l = l * f + exp2f(sink - m_f);
        }
        float inv = l > 0.0f ? f / l : 0.0f;
        int i = row_a + r * 8;
        if (i < seq) {
            u32* dst = (u32*)(out + ((i64)bz * seq + i) * ldq + (i64)h * D);
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
                dst[(dt * 8 + 2 * t) >> 1] = pack_bf16(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    flash_attn_d64(u16* out, const u16* q, const u16* k, const u16* v, const u16* sinks, int seq,
                   int kv, int hl, int kvl, int first_head, int group, int first_kv_head,
                   float scale, int mask, int w) {
    flash_attn<64>(out, q, k, v, sinks, seq, kv, hl, kvl, first_head, group, first_kv_head, scale,
                   mask, w);
}

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    flash_attn_d128(u16* out, const u16* q, const u16* k, const u16* v, const u16* sinks, int seq,
                    int kv, int hl, int kvl, int first_head, int group, int first_kv_head,
                    float scale, int mask, int w) {
    flash_attn<128>(out, q, k, v, sinks, seq, kv, hl, kvl, first_head, group, first_kv_head, scale,
                    mask, w);
}
