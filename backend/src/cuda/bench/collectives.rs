//! NCCL collectives over all the benchmark's GPUs, each checked against the host's expectation:
//! all_reduce, all_gather, reduce_scatter, an all-to-all with uneven chunks (grouped send/recv),
//! a send/recv ring (pipeline stages); then the all-reduce of a 128 MiB bf16 buffer timed.

use super::super::device::{Buf, Elem, Gpu};
use super::super::error::{driver, Result};
use super::super::nccl::{Collectives, Exchange};
use super::rank::Rank;
use super::report::CollectiveRow;

/// Elements per rank of the correctness checks.
const N: usize = 1 << 16;

fn bufs(ranks: &[Rank], elem: Elem, len: usize) -> Result<Vec<Buf>> {
    ranks.iter().map(|r| r.alloc(elem, len)).collect()
}

fn addrs(b: &[Buf]) -> Vec<u64> {
    b.iter().map(Buf::addr).collect()
}

fn row(label: String, correct: bool) -> CollectiveRow {
    CollectiveRow {
        label,
        correct,
        ms: None,
        alg_gbs: None,
        bus_gbs: None,
    }
}

/// Uploads `f(rank)` to each rank's buffer.
fn fill<T: Copy>(ranks: &[Rank], b: &[Buf], f: impl Fn(usize) -> Vec<T>) -> Result<()> {
    for (i, (r, buf)) in ranks.iter().zip(b).enumerate() {
        r.gpu.after_burn()?;
        r.gpu.upload(buf.addr(), &f(i))?;
    }
    Ok(())
}

/// True when every rank's buffer holds `expect(rank)`.
fn holds<T: Copy + Default + PartialEq>(
    ranks: &[Rank],
    b: &[Buf],
    expect: impl Fn(usize) -> Vec<T>,
) -> Result<bool> {
    let mut ok = true;
    for (i, (r, buf)) in ranks.iter().zip(b).enumerate() {
        let want = expect(i);
        ok &= r.gpu.download::<T>(buf.addr(), want.len())? == want;
    }
    Ok(ok)
}

/// All-to-all chunk sizes: rank `from` sends `chunk(from, to)` elements to `to` (all different).
fn chunk(from: usize, to: usize) -> usize {
    1000 + 7 * from + 3 * to
}

/// Runs the checks; returns the rows and NCCL's version.
pub fn run_collectives(ranks: &[Rank], iters: usize) -> Result<(Vec<CollectiveRow>, Option<i32>)> {
    let w = ranks.len();
    let gpus: Vec<&Gpu> = ranks.iter().map(|r| &r.gpu).collect();
    let coll = Collectives::new(&gpus)?;
    let version = Collectives::version().ok();
    let mut rows = Vec::new();

    // all_reduce, f32 in place: rank r holds (r + 1) * (i % 97); the sum is S * (i % 97).
    let a = bufs(ranks, Elem::F32, N)?;
    fill(ranks, &a, |r| {
        (0..N).map(|i| ((r + 1) * (i % 97)) as f32).collect()
    })?;
    coll.all_reduce(&addrs(&a), &addrs(&a), N, Elem::F32)?;
    let s = (w * (w + 1) / 2) as f32;
    let ok = holds(ranks, &a, |_| {
        (0..N).map(|i| s * (i % 97) as f32).collect::<Vec<f32>>()
    })?;
    rows.push(row(format!("all_reduce f32 x {N} (in place)"), ok));

    // all_gather, f32: rank r contributes r * N + i.
    let send = bufs(ranks, Elem::F32, N)?;
    let recv = bufs(ranks, Elem::F32, w * N)?;
    fill(ranks, &send, |r| {
        (0..N).map(|i| (r * N + i) as f32).collect()
    })?;
    coll.all_gather(&addrs(&send), &addrs(&recv), N, Elem::F32)?;
    let ok = holds(ranks, &recv, |_| {
        (0..w * N).map(|i| i as f32).collect::<Vec<f32>>()
    })?;
    rows.push(row(format!("all_gather f32 x {N} per rank"), ok));

    // reduce_scatter, f32: rank r holds (r + 1) + (j % 113) for j < W N; rank q receives
    // part q of the sum.
    let send = bufs(ranks, Elem::F32, w * N)?;
    let recv = bufs(ranks, Elem::F32, N)?;
    fill(ranks, &send, |r| {
        (0..w * N).map(|j| ((r + 1) + j % 113) as f32).collect()
    })?;
    coll.reduce_scatter(&addrs(&send), &addrs(&recv), N, Elem::F32)?;
    let ok = holds(ranks, &recv, |q| {
        (0..N)
            .map(|i| (s as usize + w * ((q * N + i) % 113)) as f32)
            .collect::<Vec<f32>>()
    })?;
    rows.push(row(format!("reduce_scatter f32 x {N} per rank"), ok));

    // all-to-all as grouped send/recv with uneven chunks, i32: rank r's chunk for rank j holds
    // r * 1_000_000 + j * 10_000 + i; rank j receives the chunks in source order.
    let send_len = |r: usize| (0..w).map(|j| chunk(r, j)).sum::<usize>();
    let recv_len = |j: usize| (0..w).map(|r| chunk(r, j)).sum::<usize>();
    let most = (0..w)
        .map(|r| send_len(r).max(recv_len(r)))
        .max()
        .unwrap_or(0);
    let send = bufs(ranks, Elem::I32, most)?;
    let recv = bufs(ranks, Elem::I32, most)?;
    let value = |r: usize, j: usize, i: usize| (r * 1_000_000 + j * 10_000 + i) as i32;
    fill(ranks, &send, |r| {
        (0..w)
            .flat_map(|j| (0..chunk(r, j)).map(move |i| value(r, j, i)))
            .collect::<Vec<i32>>()
    })?;
    let mut x = Exchange::default();
    for (r, s) in send.iter().enumerate() {
        let mut src = s.addr();
        for (j, d) in recv.iter().enumerate() {
            let dst_off: usize = (0..r).map(|q| chunk(q, j)).sum();
            x.push(r, src, j, d.at(Elem::I32, dst_off)?, chunk(r, j));
            src += (chunk(r, j) * 4) as u64;
        }
    }
    coll.exchange(&x, Elem::I32)?;
    let ok = holds(ranks, &recv, |j| {
        (0..w)
            .flat_map(|r| (0..chunk(r, j)).map(move |i| value(r, j, i)))
            .collect::<Vec<i32>>()
    })?;
    rows.push(row(
        "all_to_all i32, uneven chunks (grouped send/recv)".into(),
        ok,
    ));

    // send/recv ring, as between pipeline stages: rank r sends to r + 1 (mod W).
    let send = bufs(ranks, Elem::I32, N)?;
    let recv = bufs(ranks, Elem::I32, N)?;
    fill(ranks, &send, |r| {
        (0..N).map(|i| (r * N + i) as i32).collect()
    })?;
    let mut ring = Exchange::default();
    for r in 0..w {
        ring.push(r, send[r].addr(), (r + 1) % w, recv[(r + 1) % w].addr(), N);
    }
    coll.exchange(&ring, Elem::I32)?;
    let ok = holds(ranks, &recv, |q| {
        let from = (q + w - 1) % w;
        (0..N).map(|i| (from * N + i) as i32).collect::<Vec<i32>>()
    })?;
    rows.push(row(format!("send/recv ring i32 x {N}"), ok));

    // Timed: all-reduce of 64 Mi bf16 (128 MiB) in place (on one GPU it is a no-op: skipped).
    if w == 1 {
        return Ok((rows, version));
    }
    let n = 64usize << 20;
    let big = bufs(ranks, Elem::Bf16, n)?;
    for (r, b) in ranks.iter().zip(&big) {
        r.gpu.after_burn()?;
        r.k.fill_uniform(b.addr(), n, 9, 0, 1.0)?;
    }
    let ptrs = addrs(&big);
    for _ in 0..3 {
        coll.all_reduce(&ptrs, &ptrs, n, Elem::Bf16)?;
    }
    let starts = gpus.iter().map(|g| g.event()).collect::<Result<Vec<_>>>()?;
    let ends = gpus.iter().map(|g| g.event()).collect::<Result<Vec<_>>>()?;
    for (g, e) in gpus.iter().zip(&starts) {
        g.record(e)?;
    }
    for _ in 0..iters {
        coll.all_reduce(&ptrs, &ptrs, n, Elem::Bf16)?;
    }
    for (g, e) in gpus.iter().zip(&ends) {
        g.record(e)?;
    }
    let mut ms = 0.0f64;
    for (s, e) in starts.iter().zip(&ends) {
        let t = s.elapsed_ms(e).map_err(driver("cuEventElapsedTime"))?;
        ms = ms.max(f64::from(t) / iters as f64);
    }
    let alg = (n * 2) as f64 / (ms * 1e-3) / 1e9;
    rows.push(CollectiveRow {
        label: format!("all_reduce bf16 x {n} (128 MiB) over {w} GPU(s), timed"),
        correct: true,
        ms: Some(ms),
        alg_gbs: Some(alg),
        bus_gbs: Some(alg * 2.0 * (w as f64 - 1.0) / w as f64),
    });
    Ok((rows, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_differ_per_pair() {
        let mut seen: Vec<usize> = (0..4)
            .flat_map(|r| (0..4).map(move |j| chunk(r, j)))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() > 4);
        assert_ne!(chunk(0, 1), chunk(1, 0));
    }
}
