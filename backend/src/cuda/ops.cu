// moe-opt: the executor's own CUDA kernels (the compute seam's CUDA side), compiled at run time
// by NVRTC (no headers, no nvcc) and launched on burn-cuda's stream.
//
// bf16 values are raw 16-bit patterns; arithmetic is fp32 (the seeded fill: fp64, as on the
// host), rounding to nearest even on store. Row kernels move 16-byte vectors (8 bf16): the host
// checks that row lengths are multiples of 8 and that buffers are 16-byte aligned. Nothing here
// uses atomics: every output element is written by exactly one thread, so results are
// deterministic.

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;
typedef unsigned long long u64;

struct alignas(16) Vec8 {
    u32 w[4];
};

// Entries per block of the routing sort: 256 threads, 8 warps.
#define CHUNK 256
#define WARPS (CHUNK / 32)
// Largest top-k the router and the combine handle (the host checks).
#define MAX_TOPK 16
// Largest expert count the router kernel handles (the host checks).
#define MAX_EXPERTS 512

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

// Row geometry of the row kernels: `rpb` rows per block, `blockDim.x / rpb` threads per row,
// each thread striding over the row's `vpr` vectors. Returns false for idle threads.
__device__ __forceinline__ bool row_of_thread(int rows, int rpb, i64* row, int* lane, int* tpr) {
    *tpr = blockDim.x / rpb;
    int sub = threadIdx.x / *tpr;
    *lane = threadIdx.x - sub * *tpr;
    *row = (i64)blockIdx.x * rpb + sub;
    return sub < rpb && *row < rows;
}

// dst[r] = src[idx[r]] for r < rows; a row of zeros where idx[r] is not a row of src (< 0 or
// >= src_rows).
extern "C" __global__ void gather_rows(Vec8* __restrict__ dst, const Vec8* __restrict__ src,
                                       const int* __restrict__ idx, int rows, int src_rows,
                                       int vpr, int rpb) {
    i64 r;
    int lane, tpr;
    if (!row_of_thread(rows, rpb, &r, &lane, &tpr)) return;
    int s = idx[r];
    Vec8* d = dst + r * vpr;
    if (s < 0 || s >= src_rows) {
        Vec8 z;
        z.w[0] = 0u; z.w[1] = 0u; z.w[2] = 0u; z.w[3] = 0u;
        for (int c = lane; c < vpr; c += tpr) d[c] = z;
        return;
    }
    const Vec8* p = src + (i64)s * vpr;
#pragma unroll 4
    for (int c = lane; c < vpr; c += tpr) d[c] = p[c];
}

// out[t] = sum_j weight[t*k+j] * src[row[t*k+j]] over the choices with row >= 0, in choice
// order, fp32 sum; zero when a token has none. bf16 weights (the router's output type).
extern "C" __global__ void combine_rows(Vec8* __restrict__ out, const Vec8* __restrict__ src,
                                        const int* __restrict__ row,
                                        const u16* __restrict__ weight, int rows, int k,
                                        int vpr, int rpb) {
    i64 r;
    int lane, tpr;
    if (!row_of_thread(rows, rpb, &r, &lane, &tpr)) return;
    int s[MAX_TOPK];
    float w[MAX_TOPK];
#pragma unroll
    for (int j = 0; j < MAX_TOPK; ++j) {
        s[j] = j < k ? row[r * k + j] : -1;
        w[j] = s[j] >= 0 ? bf16_to_f32(weight[r * k + j]) : 0.0f;
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

// Whether key a (index ia) ranks before key b (index ib): larger first, ties to the lower index.
__device__ __forceinline__ bool before(float a, int ia, float b, int ib) {
    return a > b || (a == b && ia < ib);
}

// The router, one thread per token, on logits [n, e] (bf16): scores = softmax (score 0) or
// sigmoid (score 1) in fp32; keys = scores + bias (bias may be null); with groups > 0, only the
// experts of the `topk_groups` best groups (group score: max key, or the sum of the two largest
// keys when group_score is 1; ties to the lower group) are eligible; the k best eligible keys
// (ties to the lower expert) are chosen, best first; weights are their scores, divided by their
// sum when normalize (and the sum is not 0), times scale. Writes expert[t*k+j] (i32) and
// weight[t*k+j] (bf16).
extern "C" __global__ void router_topk(const u16* __restrict__ logits,
                                       const u16* __restrict__ bias, int n, int e, int k,
                                       int score, int groups, int topk_groups, int group_score,
                                       int normalize, float scale, int* __restrict__ expert,
                                       u16* __restrict__ weight) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const u16* l = logits + (i64)t * e;
    float sc[MAX_EXPERTS];
    if (score == 0) {
        float mx = -3.402823466e38f;
        for (int i = 0; i < e; ++i) mx = fmaxf(mx, bf16_to_f32(l[i]));
        float sum = 0.0f;
        for (int i = 0; i < e; ++i) {
            sc[i] = expf(bf16_to_f32(l[i]) - mx);
            sum += sc[i];
        }
        for (int i = 0; i < e; ++i) sc[i] = sc[i] / sum;
    } else {
        for (int i = 0; i < e; ++i) sc[i] = 1.0f / (1.0f + expf(-bf16_to_f32(l[i])));
    }
    // Eligibility as a bitmask over groups (at most 64 groups; the host checks).
    u64 kept = ~0ull;
    int size = groups > 0 ? e / groups : e;
    if (groups > 0) {
        float gs[64];
        for (int g = 0; g < groups; ++g) {
            float m1 = -3.402823466e38f, m2 = -3.402823466e38f;
            for (int i = g * size; i < (g + 1) * size; ++i) {
                float key = sc[i] + (bias ? bf16_to_f32(bias[i]) : 0.0f);
                if (key > m1) {
                    m2 = m1;
                    m1 = key;
                } else if (key > m2) {
                    m2 = key;
                }
            }
            gs[g] = group_score == 1 ? m1 + m2 : m1;
        }
        kept = 0ull;
        for (int j = 0; j < topk_groups; ++j) {
            int best = -1;
            for (int g = 0; g < groups; ++g) {
                if ((kept >> g) & 1ull) continue;
                if (best < 0 || before(gs[g], g, gs[best], best)) best = g;
            }
            kept |= 1ull << best;
        }
    }
    int sel[MAX_TOPK];
    float w[MAX_TOPK];
    float wsum = 0.0f;
    for (int j = 0; j < k; ++j) {
        int best = -1;
        float bk = 0.0f;
        for (int i = 0; i < e; ++i) {
            if (!((kept >> (i / size)) & 1ull)) continue;
            bool taken = false;
            for (int q = 0; q < j; ++q) taken = taken || sel[q] == i;
            if (taken) continue;
            float key = sc[i] + (bias ? bf16_to_f32(bias[i]) : 0.0f);
            if (best < 0 || before(key, i, bk, best)) {
                best = i;
                bk = key;
            }
        }
        sel[j] = best;
        w[j] = sc[best];
        wsum += w[j];
    }
    for (int j = 0; j < k; ++j) {
        float v = w[j];
        if (normalize && wsum != 0.0f) v = v / wsum;
        expert[(i64)t * k + j] = sel[j];
        weight[(i64)t * k + j] = (u16)f32_to_bf16(v * scale);
    }
}

// The routing entries in priority order: entry p = j * n + t (all first choices in token
// order, then all second choices, ...) holds expert[t * k + j]; out-of-range experts become -1.
extern "C" __global__ void choice_major(const int* __restrict__ expert, int n, int k, int e,
                                        int* __restrict__ out) {
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n * k) return;
    int j = p / n;
    int t = p - j * n;
    int x = expert[(i64)t * k + j];
    out[p] = (x >= 0 && x < e) ? x : -1;
}

// Per-warp counts of each expert among this block's CHUNK entries, into sm[WARPS][e].
// Returns the entry's expert (-1 when past the end or invalid) and its warp match mask.
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

// Routing sort, pass 3 (stable): each priority-ordered entry p (see choice_major) gets its
// sorted position, expert-major and in priority order within an expert: sorted_token[pos] =
// p % n, entry_pos[p] = pos (-1: invalid expert). Launch: as route_count.
extern "C" __global__ void route_place(const int* __restrict__ expert, int total, int e, int n,
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
    sorted_token[pos] = i % n;
    entry_pos[i] = pos;
}

// The row of each (token, choice) in the sorted rows, token-major: entry_row[t * k + j] is the
// sorted position of priority entry j * n + t when it ranks below `cap` within its expert (the
// IR's capacity: slots filled in priority order), else -1 (dropped).
extern "C" __global__ void entry_rows(const int* __restrict__ entry_pos,
                                      const int* __restrict__ expert_cm,
                                      const int* __restrict__ expert_off, int n, int k, int cap,
                                      int* __restrict__ entry_row) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * k) return;
    int t = i / k;
    int j = i - t * k;
    int p = j * n + t;
    int pos = entry_pos[p];
    int x = expert_cm[p];
    entry_row[i] = (pos >= 0 && pos - expert_off[x] < cap) ? pos : -1;
}

// Seeded weights, bit for bit the host's (backend/src/weights/seeded.rs): element i of a block
// of a tensor of `rank` dims has global flat index g (block offsets `off`, block dims `blk`,
// global strides `stride`); its value is (2u - 1) * scale rounded to f32, u the top 53 bits of
// mix(key ^ mix(g * GOLDEN + 1)) over 2^53, computed in fp64 without contraction. Stored as
// bf16 (round to nearest even) when bf16, else f32.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

extern "C" __global__ void seeded_fill(void* __restrict__ dst, int bf16, i64 n, u64 key,
                                       double scale, int rank, i64 blk0, i64 blk1, i64 blk2,
                                       i64 blk3, i64 off0, i64 off1, i64 off2, i64 off3,
                                       i64 st0, i64 st1, i64 st2, i64 st3) {
    const i64 blk[4] = {blk0, blk1, blk2, blk3};
    const i64 off[4] = {off0, off1, off2, off3};
    const i64 st[4] = {st0, st1, st2, st3};
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        i64 rest = i;
        u64 g = 0;
        for (int d = rank - 1; d >= 0; --d) {
            i64 c = rest % blk[d];
            rest /= blk[d];
            g += (u64)(off[d] + c) * (u64)st[d];
        }
        u64 bits = mix64(key ^ mix64(g * 0x9e3779b97f4a7c15ULL + 1ULL));
        double u = __dmul_rn((double)(bits >> 11), 1.0 / 9007199254740992.0);
        double v = __dmul_rn(__dadd_rn(__dmul_rn(2.0, u), -1.0), scale);
        float f = __double2float_rn(v);
        if (bf16) {
            ((u16*)dst)[i] = (u16)f32_to_bf16(f);
        } else {
            ((float*)dst)[i] = f;
        }
    }
}

// RMSNorm (center 0) or LayerNorm (center 1) of every group of g consecutive elements (bf16),
// fp32 math: (x - mean) / sqrt(var + eps) * w (+ b), mean 0 for RMSNorm. One block per group.
extern "C" __global__ void norm_rows(u16* __restrict__ y, const u16* __restrict__ x,
                                     const u16* __restrict__ w, const u16* __restrict__ b,
                                     int groups, int g, float eps, int center) {
    __shared__ float red[32];
    int r = blockIdx.x;
    if (r >= groups) return;
    const u16* xr = x + (i64)r * g;
    u16* yr = y + (i64)r * g;
    float mean = 0.0f;
    for (int pass = center ? 0 : 1; pass < 2; ++pass) {
        float acc = 0.0f;
        for (int j = threadIdx.x; j < g; j += blockDim.x) {
            float v = bf16_to_f32(xr[j]) - mean;
            acc += pass == 0 ? v : v * v;
        }
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = acc;
        __syncthreads();
        if (threadIdx.x < 32) {
            float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (threadIdx.x == 0) red[0] = v / (float)g;
        }
        __syncthreads();
        if (pass == 0) mean = red[0];
        if (pass == 1) {
            float inv = rsqrtf(red[0] + eps);
            for (int j = threadIdx.x; j < g; j += blockDim.x) {
                float v = (bf16_to_f32(xr[j]) - mean) * inv * bf16_to_f32(w[j]);
                if (b) v += bf16_to_f32(b[j]);
                yr[j] = (u16)f32_to_bf16(v);
            }
        }
        __syncthreads();
    }
}

// y = act(g) * u elementwise (bf16, fp32 math): act 0 silu, 1 gelu (erf); u null: y = act(g).
extern "C" __global__ void gated_act(u16* __restrict__ y, const u16* __restrict__ g,
                                     const u16* __restrict__ u, i64 n, int act) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        float a = bf16_to_f32(g[i]);
        float h = act == 0 ? a / (1.0f + expf(-a)) : 0.5f * a * (1.0f + erff(a * 0.7071067811865476f));
        y[i] = (u16)f32_to_bf16(u ? h * bf16_to_f32(u[i]) : h);
    }
}
