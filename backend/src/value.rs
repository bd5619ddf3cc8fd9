//! A rank's local piece of one IR value: a float tensor on the burn device, or integers on the
//! host.
//!
//! IR values have ranks 0 to 4 (the importer and the passes produce at most 3). Float tensors are
//! stored as burn rank-4 tensors with leading dims of 1 (`[T, H]` is `[1, 1, T, H]`), so one Rust
//! type holds every IR rank and burn's right-aligned broadcasting matches the IR's. Integer values
//! (token ids, routing indices, per-expert counts) drive data-dependent control (routing, slot
//! assignment, gathers) and live on the host, where that logic runs exactly and deterministically.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// The largest IR rank the executor handles.
pub(crate) const MAX_RANK: usize = 4;

/// `shape` left-padded with 1s to rank 4.
pub(crate) fn pad4(shape: &[usize]) -> [usize; 4] {
    let mut out = [1; 4];
    out[MAX_RANK - shape.len()..].copy_from_slice(shape);
    out
}

/// A float tensor of logical rank `rank` (0..=4), stored as burn rank 4.
#[derive(Clone, Debug)]
pub(crate) struct Dense<B: Backend> {
    pub t: Tensor<B, 4>,
    pub rank: usize,
}

impl<B: Backend> Dense<B> {
    /// Wraps a burn tensor of rank `D` (at most 4).
    pub fn of<const D: usize>(t: Tensor<B, D>) -> Dense<B> {
        let shape = t.dims();
        Dense {
            t: t.reshape(pad4(&shape)),
            rank: D,
        }
    }

    /// The logical shape.
    pub fn shape(&self) -> Vec<usize> {
        self.t.dims()[MAX_RANK - self.rank..].to_vec()
    }

    /// The same data with logical shape `shape` (same number of elements).
    pub fn reshape(self, shape: &[usize]) -> Dense<B> {
        Dense {
            t: self.t.reshape(pad4(shape)),
            rank: shape.len(),
        }
    }

    /// The data as a burn tensor of rank `D`: the logical shape with leading dims merged (`D` less
    /// than the logical rank) or padded with 1s (`D` greater).
    pub fn to<const D: usize>(self) -> Tensor<B, D> {
        let shape = self.shape();
        let mut dims = [1usize; D];
        if shape.len() >= D {
            let lead: usize = shape[..=shape.len() - D].iter().product();
            dims[0] = lead;
            dims[1..].copy_from_slice(&shape[shape.len() - D + 1..]);
        } else {
            dims[D - shape.len()..].copy_from_slice(&shape);
        }
        self.t.reshape(dims)
    }

    /// A tensor from host values (converted to the backend's float type).
    pub fn from_host(data: Vec<f64>, shape: &[usize], device: &B::Device) -> Dense<B> {
        let t = Tensor::<B, 4>::from_data(TensorData::new(data, pad4(shape)), device);
        Dense {
            t,
            rank: shape.len(),
        }
    }

    /// A tensor from f32 host values.
    pub fn from_f32(data: Vec<f32>, shape: &[usize], device: &B::Device) -> Dense<B> {
        let t = Tensor::<B, 4>::from_data(TensorData::new(data, pad4(shape)), device);
        Dense {
            t,
            rank: shape.len(),
        }
    }

    /// Zeros of `shape`.
    pub fn zeros(shape: &[usize], device: &B::Device) -> Dense<B> {
        Dense {
            t: Tensor::zeros(pad4(shape), device),
            rank: shape.len(),
        }
    }

    /// The values on the host, in row-major order, as f64.
    pub fn to_host(&self) -> Vec<f64> {
        // burn-ndarray reads a tensor whole only when its storage is unshared and its layout
        // contiguous; otherwise element by element (10x slower). Values are clones of the
        // executor's store (shared): read a fresh flat copy (one vectorized pass).
        let n = self.t.dims().iter().product::<usize>();
        let flat: Tensor<B, 1> = self.t.clone().reshape([n]);
        let data = (flat * 1.0).into_data();
        if let Ok(v) = data.as_slice::<f32>() {
            return v.iter().map(|&x| f64::from(x)).collect();
        }
        if let Ok(v) = data.as_slice::<f64>() {
            return v.to_vec();
        }
        data.iter::<f64>().collect()
    }

    /// Logical dim `d` as a burn (rank-4) dim.
    pub fn dim(&self, d: usize) -> usize {
        MAX_RANK - self.rank + d
    }

    /// `len` entries of logical dim `d` from `start`.
    pub fn narrow(self, d: usize, start: usize, len: usize) -> Dense<B> {
        let dim = self.dim(d);
        Dense {
            t: self.t.narrow(dim, start, len),
            rank: self.rank,
        }
    }

    /// Concatenation along logical dim `d` (all parts of the same rank).
    pub fn cat(parts: Vec<Dense<B>>, d: usize) -> Dense<B> {
        let rank = parts.first().map_or(1, |p| p.rank);
        let t = Tensor::cat(
            parts.into_iter().map(|p| p.t).collect(),
            MAX_RANK - rank + d,
        );
        Dense { t, rank }
    }
}

/// Integers held on the host (row-major).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ints {
    pub shape: Vec<usize>,
    pub data: Vec<i64>,
}

impl Ints {
    pub fn new(shape: Vec<usize>, data: Vec<i64>) -> Ints {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Ints { shape, data }
    }

    /// (product of dims before `d`, dim `d`, product of dims after `d`).
    fn split_at(&self, d: usize) -> (usize, usize, usize) {
        let outer = self.shape[..d].iter().product();
        let inner = self.shape[d + 1..].iter().product();
        (outer, self.shape[d], inner)
    }

    /// `len` entries of dim `d` from `start`.
    pub fn narrow(&self, d: usize, start: usize, len: usize) -> Ints {
        let (outer, n, inner) = self.split_at(d);
        let mut data = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let base = o * n * inner;
            data.extend_from_slice(&self.data[base + start * inner..base + (start + len) * inner]);
        }
        let mut shape = self.shape.clone();
        shape[d] = len;
        Ints { shape, data }
    }

    /// Concatenation along dim `d`.
    pub fn cat(parts: &[Ints], d: usize) -> Ints {
        let Some(first) = parts.first() else {
            return Ints::new(vec![0], vec![]);
        };
        let outer: usize = first.shape[..d].iter().product();
        let mut shape = first.shape.clone();
        shape[d] = parts.iter().map(|p| p.shape[d]).sum();
        let mut data = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for p in parts {
                let (_, n, inner) = p.split_at(d);
                data.extend_from_slice(&p.data[o * n * inner..(o + 1) * n * inner]);
            }
        }
        Ints { shape, data }
    }

    /// As a rank-1 burn integer tensor.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        let n = self.data.len();
        Tensor::from_data(TensorData::new(self.data.clone(), [n]), device)
    }
}

/// Integers on the burn device (i32 or i64 as the backend stores them), row-major: what a
/// device kernel of the compute seam produced (a router's choices). `id` names the value, so a
/// later op can tell that a [`Ragged`] buffer was dispatched by exactly these choices.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // made by the CUDA seam only
pub(crate) struct DevInts<B: Backend> {
    pub shape: Vec<usize>,
    pub t: Tensor<B, 1, Int>,
    pub id: u64,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // made by the CUDA seam only
impl<B: Backend> DevInts<B> {
    /// Wraps a flat device tensor of `shape`'s element count, under a fresh id.
    pub fn new(shape: Vec<usize>, t: Tensor<B, 1, Int>) -> DevInts<B> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        DevInts { shape, t, id }
    }

    /// The values on the host (a device read: waits for the work that makes them).
    pub fn to_ints(&self) -> Ints {
        let data = self.t.clone().into_data();
        let v: Vec<i64> = data.iter::<i64>().collect();
        Ints::new(self.shape.clone(), v)
    }
}

/// A padded expert buffer `[experts, cap, H]` (the `dispatch` layout) held as its filled slots
/// only, the way a dropless router fills it: expert `e`'s slots `0..kept(e)` are the rows
/// `offsets[e] .. offsets[e] + kept(e)` of `rows`, where `kept(e) = min(offsets[e+1] - offsets[e],
/// cap)`; every other slot is zero. Rows of an expert past `cap` (dropped pairs) may hold
/// anything and are never read as slots.
///
/// `entry_row[t * k + j]` is the row of `rows` holding token `t`'s `j`-th choice, or -1 when that
/// pair was dropped; it belongs to the router value `routing` (a [`DevInts`] id), so `combine`
/// with those choices reads rows directly instead of slots.
///
/// It is a representation, not a value of its own: [`Ragged::to_dense`] gives the padded tensor
/// every op that does not know it sees.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // made by the CUDA seam only
pub(crate) struct Ragged<B: Backend> {
    pub rows: Tensor<B, 2>,
    /// `[experts + 1]`: first row of each expert, then the row count.
    pub offsets: Tensor<B, 1, Int>,
    pub entry_row: Tensor<B, 1, Int>,
    pub routing: u64,
    pub experts: usize,
    pub cap: usize,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // made by the CUDA seam only
impl<B: Backend> Ragged<B> {
    /// The logical (padded) shape `[experts, cap, H]`.
    pub fn shape(&self) -> Vec<usize> {
        vec![self.experts, self.cap, self.rows.dims()[1]]
    }

    /// The offsets on the host (a device read).
    pub fn host_offsets(&self) -> Vec<i64> {
        self.offsets.clone().into_data().iter::<i64>().collect()
    }

    /// The same buffer with new rows (an op applied row by row, e.g. the expert FFN).
    pub fn with_rows(&self, rows: Tensor<B, 2>) -> Ragged<B> {
        Ragged {
            rows,
            ..self.clone()
        }
    }

    /// The padded tensor `[experts, cap, H]`: slot (e, s) is row `offsets[e] + s` for `s <
    /// kept(e)`, zero otherwise.
    pub fn to_dense(&self) -> Dense<B> {
        let [n, h] = self.rows.dims();
        let off = self.host_offsets();
        let mut src = Vec::with_capacity(self.experts * self.cap);
        for e in 0..self.experts {
            let (lo, hi) = (off[e], off[e + 1]);
            for s in 0..self.cap as i64 {
                src.push(if lo + s < hi { lo + s } else { n as i64 });
            }
        }
        let device = self.rows.device();
        let ext = Tensor::cat(vec![self.rows.clone(), Tensor::zeros([1, h], &device)], 0);
        let out = ext.select(0, Ints::new(vec![src.len()], src).to_tensor(&device));
        Dense::of(out.reshape([self.experts, self.cap, h]))
    }
}

/// A rank's local piece of one IR value.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // made by the CUDA seam only
pub(crate) enum Local<B: Backend> {
    Float(Dense<B>),
    Int(Ints),
    /// Integers a device kernel made (see [`DevInts`]); [`Local::plain`] reads them to the host.
    DevInt(DevInts<B>),
    /// A padded expert buffer held as its filled rows (see [`Ragged`]).
    Ragged(Ragged<B>),
}

impl<B: Backend> Local<B> {
    /// The logical local shape.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Local::Float(d) => d.shape(),
            Local::Int(i) => i.shape.clone(),
            Local::DevInt(i) => i.shape.clone(),
            Local::Ragged(r) => r.shape(),
        }
    }

    /// The value in one of the two plain forms every op and collective handles: device integers
    /// read to the host, a ragged buffer made padded.
    pub fn plain(self) -> Local<B> {
        match self {
            Local::DevInt(i) => Local::Int(i.to_ints()),
            Local::Ragged(r) => Local::Float(r.to_dense()),
            plain => plain,
        }
    }

    /// The values on the host as f64.
    pub fn to_host(&self) -> Vec<f64> {
        match self {
            Local::Float(d) => d.to_host(),
            Local::Int(i) => i.data.iter().map(|&v| v as f64).collect(),
            Local::DevInt(i) => i.to_ints().data.iter().map(|&v| v as f64).collect(),
            Local::Ragged(r) => r.to_dense().to_host(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{dense, Cpu};

    #[test]
    fn dense_keeps_its_logical_shape() {
        let d = dense(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
        assert_eq!(d.shape(), vec![2, 3]);
        assert_eq!(d.t.dims(), [1, 1, 2, 3]);
        let t3 = d.clone().reshape(&[3, 1, 2]).to::<2>();
        assert_eq!(t3.dims(), [3, 2]);
        let t1 = d.clone().to::<1>();
        assert_eq!(t1.dims(), [6]);
        let n = d.clone().narrow(1, 1, 2);
        assert_eq!(n.to_host(), vec![2., 3., 5., 6.]);
        let c = Dense::<Cpu>::cat(vec![d.clone(), d], 0);
        assert_eq!(c.shape(), vec![4, 3]);
    }

    #[test]
    fn ints_narrow_and_cat_are_inverse() {
        let a = Ints::new(vec![2, 3], (0..6).collect());
        let left = a.narrow(1, 0, 1);
        let right = a.narrow(1, 1, 2);
        assert_eq!(left.data, vec![0, 3]);
        assert_eq!(right.data, vec![1, 2, 4, 5]);
        assert_eq!(Ints::cat(&[left, right], 1), a);
        let rows = Ints::cat(&[a.narrow(0, 0, 1), a.narrow(0, 1, 1)], 0);
        assert_eq!(rows, a);
    }
}
