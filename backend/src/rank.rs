//! SPMD layout helpers: where a rank's local block sits in a value's global tensor, and which
//! ranks hold each block once (to rebuild a global value from the ranks' shards).
//!
//! A type's `split[d]` lists the mesh axes splitting dim `d`, major first: a rank's block index in
//! that dim is the mixed-radix number of its coordinates on those axes. Axes a type does not
//! mention replicate the value; `partial` axes hold addends of it.

use moe_ir::{Mesh, TensorType};

/// A rank's block of a global tensor: per-dim offsets and the local shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Block {
    pub offsets: Vec<usize>,
    pub shape: Vec<usize>,
}

/// `(index, count)` of the block the rank at `coords` holds along `axes` (major first).
pub(crate) fn axis_block<S: AsRef<str>>(mesh: &Mesh, coords: &[u32], axes: &[S]) -> (u64, u64) {
    let mut index = 0u64;
    let mut count = 1u64;
    for a in axes {
        if let Some(i) = mesh.axis_index(a.as_ref()) {
            let size = u64::from(mesh.axes[i].size);
            index = index * size + u64::from(coords[i]);
            count *= size;
        }
    }
    (index, count)
}

/// The block of `ty`'s global tensor that the rank at `coords` holds.
pub(crate) fn block(ty: &TensorType, mesh: &Mesh, coords: &[u32]) -> Block {
    let mut offsets = Vec::with_capacity(ty.rank());
    let mut shape = Vec::with_capacity(ty.rank());
    for (d, &n) in ty.shape.iter().enumerate() {
        let (index, count) = axis_block(mesh, coords, ty.split_of(d));
        let local = n / count.max(1);
        offsets.push((index * local) as usize);
        shape.push(local as usize);
    }
    Block { offsets, shape }
}

/// The local shape of `ty` on any rank.
pub(crate) fn local_shape(ty: &TensorType, mesh: &Mesh) -> Vec<usize> {
    ty.local_shape(mesh).iter().map(|&n| n as usize).collect()
}

/// Whether the rank at `coords` is the one that holds a partial leaf's value (coordinate 0 on
/// every partial axis); the other ranks of its groups hold zeros, so the sum is the value.
pub(crate) fn holds_partial_leaf(ty: &TensorType, mesh: &Mesh, coords: &[u32]) -> bool {
    ty.partial
        .iter()
        .all(|a| mesh.axis_index(a).is_none_or(|i| coords[i] == 0))
}

/// Among `ranks` (those that ran the producing node), the ones whose blocks sum to the global
/// value exactly once: every rank of each block and partial addend, one copy of replicas (the lowest
/// coordinate among `ranks` on every axis the type does not mention).
pub(crate) fn representatives(ty: &TensorType, mesh: &Mesh, ranks: &[u64]) -> Vec<u64> {
    let coords: Vec<Vec<u32>> = ranks.iter().map(|&r| mesh.coords(r)).collect();
    let free: Vec<usize> = (0..mesh.axes.len())
        .filter(|&i| !ty.axes().any(|a| a == mesh.axes[i].name))
        .collect();
    let lowest: Vec<u32> = free
        .iter()
        .map(|&i| coords.iter().map(|c| c[i]).min().unwrap_or(0))
        .collect();
    ranks
        .iter()
        .zip(&coords)
        .filter(|(_, c)| free.iter().zip(&lowest).all(|(&i, &l)| c[i] == l))
        .map(|(&r, _)| r)
        .collect()
}

/// Copies (adds) a local block's row-major `data` into the row-major `global` tensor of `shape`.
pub(crate) fn add_block(global: &mut [f64], shape: &[usize], b: &Block, data: &[f64]) {
    let rank = shape.len();
    if rank == 0 {
        if let (Some(g), Some(d)) = (global.first_mut(), data.first()) {
            *g += d;
        }
        return;
    }
    let inner = b.shape[rank - 1];
    let rows = data.len() / inner.max(1);
    let mut strides = vec![1usize; rank];
    for d in (0..rank - 1).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    for row in 0..rows {
        // Local multi-index of the row's first element, outer dims only.
        let mut rest = row;
        let mut at = b.offsets[rank - 1];
        for d in (0..rank - 1).rev() {
            let i = rest % b.shape[d];
            rest /= b.shape[d];
            at += (b.offsets[d] + i) * strides[d];
        }
        for (g, v) in global[at..at + inner]
            .iter_mut()
            .zip(&data[row * inner..(row + 1) * inner])
        {
            *g += v;
        }
    }
}

/// The row-major data of block `b` of the row-major `global` tensor of `shape`.
pub(crate) fn take_block<T: Copy>(global: &[T], shape: &[usize], b: &Block) -> Vec<T> {
    let rank = shape.len();
    if rank == 0 {
        return global.to_vec();
    }
    let inner = b.shape[rank - 1];
    let rows: usize = b.shape[..rank - 1].iter().product();
    let mut strides = vec![1usize; rank];
    for d in (0..rank - 1).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let mut out = Vec::with_capacity(rows * inner);
    for row in 0..rows {
        let mut rest = row;
        let mut at = b.offsets[rank - 1];
        for d in (0..rank - 1).rev() {
            let i = rest % b.shape[d];
            rest /= b.shape[d];
            at += (b.offsets[d] + i) * strides[d];
        }
        out.extend_from_slice(&global[at..at + inner]);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use moe_ir::DType;

    #[test]
    fn blocks_follow_major_first_axes() {
        let mesh = Mesh::parse("dp=2,tp=4", 8).unwrap();
        let t = TensorType::new(DType::F32, [16, 8]).with_split(0, &["dp", "tp"]);
        // Rank 6 = (dp 1, tp 2): block 1*4+2 = 6 of 8 rows of 2.
        assert_eq!(
            block(&t, &mesh, &mesh.coords(6)),
            Block {
                offsets: vec![12, 0],
                shape: vec![2, 8]
            }
        );
        let t = TensorType::new(DType::F32, [16, 8]).with_split(1, &["tp"]);
        let b = block(&t, &mesh, &mesh.coords(6));
        assert_eq!((b.offsets, b.shape), (vec![0, 4], vec![16, 2]));
    }

    #[test]
    fn representatives_hold_each_block_once() {
        let mesh = Mesh::parse("dp=2,tp=4", 8).unwrap();
        let all: Vec<u64> = (0..8).collect();
        let t = TensorType::new(DType::F32, [16, 8]).with_split(0, &["dp"]);
        assert_eq!(representatives(&t, &mesh, &all), vec![0, 4]);
        let p = t.clone().with_partial(&["tp"]);
        assert_eq!(representatives(&p, &mesh, &all), all);
        let r = TensorType::new(DType::F32, [4]);
        assert_eq!(representatives(&r, &mesh, &[4, 5, 6, 7]), vec![4]);
    }

    #[test]
    fn take_and_add_blocks_round_trip() {
        let mesh = Mesh::parse("a=2,b=2", 8).unwrap();
        let t = TensorType::new(DType::F32, [4, 6])
            .with_split(0, &["a"])
            .with_split(1, &["b"]);
        let global: Vec<f64> = (0..24).map(f64::from).collect();
        let mut rebuilt = vec![0.0; 24];
        for r in 0..4 {
            let b = block(&t, &mesh, &mesh.coords(r));
            let part = take_block(&global, &[4, 6], &b);
            assert_eq!(part.len(), 6);
            add_block(&mut rebuilt, &[4, 6], &b, &part);
        }
        assert_eq!(rebuilt, global);
        let b = block(&t, &mesh, &mesh.coords(3));
        assert_eq!(
            take_block(&global, &[4, 6], &b),
            vec![15., 16., 17., 21., 22., 23.]
        );
    }
}
