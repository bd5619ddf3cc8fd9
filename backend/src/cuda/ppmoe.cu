
// ---------------------------------------------------------------------------------------------
// moe-opt: PPMoE's local routing on the device (appended after grouped.cu). local_routes sorts a
// rank's (token, choice) pairs by local expert with the routing sort of ops.cu (route_count,
// route_scan, route_place) over token-major entries, so tokens ascend within an expert as the IR
// says; index_add then sums each token's rows through the inverse map that sort leaves (no
// atomics, deterministic).

// entries[p] = idx[p] - first when idx[p] is one of this rank's experts [first, first + count),
// else -1; p = t * k + j (token-major).
extern "C" __global__ void local_entries(const int* __restrict__ idx, int total, int first,
                                         int count, int* __restrict__ out) {
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= total) return;
    int x = idx[p] - first;
    out[p] = (x >= 0 && x < count) ? x : -1;
}

// From the sort (sorted_entry[pos] = entry p, expert_off[count] = pairs kept): token ids and
// weights of rows [0, rows) (token `tokens` and weight 0 past the kept pairs), counts[e], and
// entry_pos[p] = -1 where the pair's row is not below `rows`. One thread per index up to the
// largest of rows, count and tokens * k.
extern "C" __global__ void local_finish(const int* __restrict__ sorted_entry,
                                        const int* __restrict__ expert_off,
                                        const u16* __restrict__ w, int tokens, int k, int rows,
                                        int count, int* __restrict__ ids, u16* __restrict__ w_out,
                                        int* __restrict__ counts, int* __restrict__ entry_pos) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int total = tokens * k;
    int kept = min(min(expert_off[count], rows), total);
    if (i < rows) {
        if (i < kept) {
            int p = sorted_entry[i];
            ids[i] = p / k;
            w_out[i] = w[p];
        } else {
            ids[i] = tokens;
            w_out[i] = 0;
        }
    }
    if (i < count) counts[i] = min(expert_off[i + 1], kept) - min(expert_off[i], kept);
    if (i < total && entry_pos[i] >= kept) entry_pos[i] = -1;
}

// Exclusive prefix sum of counts [e] into off [e + 1] (negative counts count 0). One thread.
extern "C" __global__ void count_offsets(const int* __restrict__ counts, int e,
                                         int* __restrict__ off) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    int acc = 0;
    for (int x = 0; x < e; ++x) {
        off[x] = acc;
        acc += max(counts[x], 0);
    }
    off[e] = acc;
}

// out[t] = buf[t] + sum_j scale[s] * src[s] over s = entry_row[t * k + j] in [0, src_rows) (scale
// null: 1), fp32 sum in choice order.
extern "C" __global__ void index_add_rows(Vec8* __restrict__ out, const Vec8* __restrict__ buf,
                                          const Vec8* __restrict__ src,
                                          const u16* __restrict__ scale,
                                          const int* __restrict__ entry_row, int rows, int k,
                                          int src_rows, int vpr, int rpb) {
    i64 r;
    int lane, tpr;
    if (!row_of_thread(rows, rpb, &r, &lane, &tpr)) return;
    int s[MAX_TOPK];
    float w[MAX_TOPK];
#pragma unroll
    for (int j = 0; j < MAX_TOPK; ++j) {
        int x = j < k ? entry_row[r * k + j] : -1;
        s[j] = (x >= 0 && x < src_rows) ? x : -1;
        w[j] = s[j] < 0 ? 0.0f : (scale ? bf16_to_f32(scale[s[j]]) : 1.0f);
    }
    for (int c = lane; c < vpr; c += tpr) {
        Vec8 b = buf[r * vpr + c];
        float acc[8];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            acc[2 * q] = lo_f32(b.w[q]);
            acc[2 * q + 1] = hi_f32(b.w[q]);
        }
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
        out[r * vpr + c] = res;
    }
}
