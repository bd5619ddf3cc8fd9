// moe-opt: the CUDA path's own kernels, compiled at run time by NVRTC (no headers, no nvcc).
//
// bf16 values are raw 16-bit patterns; arithmetic is fp32, rounding to nearest even on store.
// Rows move as 16-byte vectors (8 bf16): the host checks that row lengths are multiples of 8
// and that buffers are 16-byte aligned. Nothing here uses atomics: every output element is
// written by exactly one thread, so results are deterministic.

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;
typedef unsigned long long u64;

// Eight bf16 values: one 16-byte load or store.
struct alignas(16) Vec8 {
    u32 w[4];
};

// Entries per block of the routing sort: 256 threads, 8 warps.
#define CHUNK 256
#define WARPS (CHUNK / 32)
// Largest top-k the router handles (the host checks).
#define MAX_TOPK 8

__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }
__device__ __forceinline__ float lo_f32(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_f32(u32 w) { return __uint_as_float(w & 0xffff0000u); }

__device__ __forceinline__ u32 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;  // NaN stays NaN
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    return f32_to_bf16(lo) | (f32_to_bf16(hi) << 16);
}

// Row geometry shared by the row kernels: `rpb` rows per block, `blockDim.x / rpb` threads per
// row, each thread striding over the row's `vpr` vectors. Returns false for idle threads.
__device__ __forceinline__ bool row_of_thread(int rows, int rpb, i64* row, int* lane, int* tpr) {
    *tpr = blockDim.x / rpb;
    int sub = threadIdx.x / *tpr;
    *lane = threadIdx.x - sub * *tpr;
    *row = (i64)blockIdx.x * rpb + sub;
    return sub < rpb && *row < rows;
}

// dst[r] = src[idx[r]] for r < rows; a row of zeros where idx[r] < 0 (capacity padding).
extern "C" __global__ void gather_rows(Vec8* __restrict__ dst, const Vec8* __restrict__ src,
                                       const int* __restrict__ idx, int rows, int vpr, int rpb) {
    i64 r;
    int lane, tpr;
    if (!row_of_thread(rows, rpb, &r, &lane, &tpr)) return;
    int s = idx[r];
    Vec8* d = dst + r * vpr;
    if (s < 0) {
        Vec8 z;
        z.w[0] = 0u; z.w[1] = 0u; z.w[2] = 0u; z.w[3] = 0u;
        for (int c = lane; c < vpr; c += tpr) d[c] = z;
        return;
    }
    const Vec8* p = src + (i64)s * vpr;
#pragma unroll 4
    for (int c = lane; c < vpr; c += tpr) d[c] = p[c];
}

// out[t] = sum_j weight[t*k+j] * src[slot[t*k+j]] over the entries with slot >= 0 (fp32 sum);
// zero when a token has no such entry. Top-1 is a weighted permutation, top-k a gather and a sum.
extern "C" __global__ void combine_rows(Vec8* __restrict__ out, const Vec8* __restrict__ src,
                                        const int* __restrict__ slot,
                                        const float* __restrict__ weight, int rows, int k,
                                        int vpr, int rpb) {
    i64 r;
    int lane, tpr;
    if (!row_of_thread(rows, rpb, &r, &lane, &tpr)) return;
    // Fixed-size, fully unrolled: slots and weights stay in registers.
    int s[MAX_TOPK];
    float w[MAX_TOPK];
#pragma unroll
    for (int j = 0; j < MAX_TOPK; ++j) {
        s[j] = j < k ? slot[r * k + j] : -1;
        w[j] = s[j] >= 0 ? weight[r * k + j] : 0.0f;
    }
    Vec8* o = out + r * vpr;
    for (int c = lane; c < vpr; c += tpr) {
        float acc[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[q] = 0.0f;
#pragma unroll
        for (int j = 0; j < MAX_TOPK; ++j) {
            if (s[j] < 0) continue;
            Vec8 v = src[(i64)s[j] * vpr + c];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                acc[2 * q] += w[j] * lo_f32(v.w[q]);
                acc[2 * q + 1] += w[j] * hi_f32(v.w[q]);
            }
        }
        Vec8 res;
#pragma unroll
        for (int q = 0; q < 4; ++q) res.w[q] = pack_bf16(acc[2 * q], acc[2 * q + 1]);
        o[c] = res;
    }
}

// Router: softmax over each token's `e` logits (bf16, row-major [n, e]), the `k` largest
// (ties: lowest expert id), their probabilities renormalised to sum 1 when `renorm` != 0.
// Writes expert[t*k+j] and weight[t*k+j]. One thread per token.
extern "C" __global__ void route_topk(const u16* __restrict__ logits, int n, int e, int k,
                                      int renorm, int* __restrict__ expert,
                                      float* __restrict__ weight) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const u16* l = logits + (i64)t * e;
    float mx = -3.402823466e38f;
    for (int i = 0; i < e; ++i) mx = fmaxf(mx, bf16_to_f32(l[i]));
    float sum = 0.0f;
    for (int i = 0; i < e; ++i) sum += __expf(bf16_to_f32(l[i]) - mx);
    int sel[MAX_TOPK];
    float p[MAX_TOPK];
    float psum = 0.0f;
    for (int j = 0; j < k; ++j) {
        int best = -1;
        float bv = 0.0f;
        for (int i = 0; i < e; ++i) {
            bool taken = false;
            for (int q = 0; q < j; ++q) taken = taken || sel[q] == i;
            float v = bf16_to_f32(l[i]);
            if (!taken && (best < 0 || v > bv)) {
                best = i;
                bv = v;
            }
        }
        sel[j] = best;
        p[j] = __expf(bv - mx) / sum;
        psum += p[j];
    }
    for (int j = 0; j < k; ++j) {
        expert[(i64)t * k + j] = sel[j];
        weight[(i64)t * k + j] = renorm ? p[j] / psum : p[j];
    }
}

// Per-warp counts of each expert among this block's CHUNK entries, into sm[WARPS][e].
// Returns the entry's expert (-1 when past the end or out of range) and its warp match mask.
__device__ __forceinline__ int warp_counts(const int* __restrict__ expert, int total, int e,
                                           int* sm, u32* match) {
    for (int i = threadIdx.x; i < WARPS * e; i += blockDim.x) sm[i] = 0;
    __syncthreads();
    int i = blockIdx.x * CHUNK + threadIdx.x;
    int ex = i < total ? expert[i] : -1;
    if (ex >= e) ex = -1;
    u32 m = __match_any_sync(0xffffffffu, ex);
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    if (ex >= 0 && lane == __ffs(m) - 1) sm[warp * e + ex] = __popc(m);
    __syncthreads();
    *match = m;
    return ex;
}

// Routing sort, pass 1: counts[x * chunks + c] = entries of expert x in chunk c.
// Launch: chunks blocks of CHUNK threads, WARPS * e ints of shared memory.
extern "C" __global__ void route_count(const int* __restrict__ expert, int total, int e,
                                       int* __restrict__ counts) {
    extern __shared__ int sm[];
    u32 m;
    warp_counts(expert, total, e, sm, &m);
    for (int x = threadIdx.x; x < e; x += blockDim.x) {
        int s = 0;
        for (int w = 0; w < WARPS; ++w) s += sm[w * e + x];
        counts[(i64)x * gridDim.x + blockIdx.x] = s;
    }
}

// Routing sort, pass 2: exclusive prefix sum of counts (expert-major), offsets[len] = total;
// expert_off[x] = first sorted position of expert x, expert_off[e] = total.
// Launch: one block of 1024 threads.
extern "C" __global__ void route_scan(const int* __restrict__ counts, int len, int chunks, int e,
                                      int* __restrict__ offsets, int* __restrict__ expert_off) {
    __shared__ int part[1024];
    int t = threadIdx.x;
    int per = (len + blockDim.x - 1) / blockDim.x;
    int b = t * per;
    int end = min(b + per, len);
    int s = 0;
    for (int i = b; i < end; ++i) s += counts[i];
    part[t] = s;
    __syncthreads();
    for (int d = 1; d < blockDim.x; d <<= 1) {
        int v = t >= d ? part[t - d] : 0;
        __syncthreads();
        part[t] += v;
        __syncthreads();
    }
    int run = part[t] - s;
    for (int i = b; i < end; ++i) {
        offsets[i] = run;
        if (i % chunks == 0) expert_off[i / chunks] = run;
        run += counts[i];
    }
    if (t == blockDim.x - 1) {
        offsets[len] = part[t];
        expert_off[e] = part[t];
    }
}

// Routing sort, pass 3 (stable): each entry's sorted position, expert-major and in entry order
// within an expert. sorted_token[pos] = entry / k, entry_pos[entry] = pos (-1: invalid expert).
// Launch: as route_count.
extern "C" __global__ void route_place(const int* __restrict__ expert, int total, int e, int k,
                                       const int* __restrict__ offsets,
                                       int* __restrict__ sorted_token,
                                       int* __restrict__ entry_pos) {
    extern __shared__ int sm[];
    u32 m;
    int ex = warp_counts(expert, total, e, sm, &m);
    int i = blockIdx.x * CHUNK + threadIdx.x;
    if (i >= total) return;
    if (ex < 0) {
        entry_pos[i] = -1;
        return;
    }
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    int pos = offsets[(i64)ex * gridDim.x + blockIdx.x];
    for (int w = 0; w < warp; ++w) pos += sm[w * e + ex];
    pos += __popc(m & ((1u << lane) - 1u));
    sorted_token[pos] = i / k;
    entry_pos[i] = pos;
}

// PPMoE: the combine slot of each entry: its row in this rank's expert output, which holds the
// sorted positions [expert_off[e_lo], expert_off[e_hi]); -1 when the entry's expert is elsewhere.
extern "C" __global__ void slots_range(const int* __restrict__ entry_pos, int total,
                                       const int* __restrict__ expert_off, int e_lo, int e_hi,
                                       int* __restrict__ slot) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int lo = expert_off[e_lo];
    int hi = expert_off[e_hi];
    int p = entry_pos[i];
    slot[i] = (p >= lo && p < hi) ? p - lo : -1;
}

// All-to-all: the combine slot of each entry in the capacity buffer [e, cap]:
// expert * cap + its rank within the expert; -1 when dropped (rank >= cap).
extern "C" __global__ void slots_capacity(const int* __restrict__ expert,
                                          const int* __restrict__ entry_pos, int total,
                                          const int* __restrict__ expert_off, int cap,
                                          int* __restrict__ slot) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int p = entry_pos[i];
    if (p < 0) {
        slot[i] = -1;
        return;
    }
    int x = expert[i];
    int r = p - expert_off[x];
    slot[i] = r < cap ? x * cap + r : -1;
}

// All-to-all dispatch: the source token of each capacity slot (x, r), -1 for padding.
extern "C" __global__ void dispatch_index(const int* __restrict__ sorted_token,
                                          const int* __restrict__ expert_off, int e, int cap,
                                          int* __restrict__ idx) {
    i64 s = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= (i64)e * cap) return;
    int x = (int)(s / cap);
    int r = (int)(s - (i64)x * cap);
    int lo = expert_off[x];
    int n = expert_off[x + 1] - lo;
    idx[s] = r < n ? sorted_token[lo + r] : -1;
}

// GELU (tanh form, as cuBLASLt's GELU epilogue), in place on n8 vectors of 8 bf16.
__device__ __forceinline__ float gelu(float x) {
    const float c = 0.7978845608028654f;
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

extern "C" __global__ void gelu_inplace(Vec8* __restrict__ x, i64 n8) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n8;
         i += (i64)gridDim.x * blockDim.x) {
        Vec8 v = x[i];
#pragma unroll
        for (int q = 0; q < 4; ++q) v.w[q] = pack_bf16(gelu(lo_f32(v.w[q])), gelu(hi_f32(v.w[q])));
        x[i] = v;
    }
}

// Seeded uniform values in [-scale, scale): element i of a tensor gets a hash of (seed,
// offset + i), so a shard filled with its global offset equals the same part of the whole tensor.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

extern "C" __global__ void fill_uniform(u16* __restrict__ dst, i64 n, u64 seed, i64 offset,
                                        float scale) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        u64 h = mix64(seed ^ mix64((u64)(offset + i) + 0x9e3779b97f4a7c15ULL));
        float u = (float)(h >> 40) * (1.0f / 16777216.0f);
        dst[i] = (u16)f32_to_bf16((2.0f * u - 1.0f) * scale);
    }
}
