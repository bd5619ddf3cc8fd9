//! Safetensors checkpoints: one or more files (the shards of an HF checkpoint), given as bytes.

use super::scheme::Scheme;
use crate::error::WeightError;
use burn::tensor::{bf16, f16};
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::OnceLock;

/// One tensor read from a checkpoint, converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stored {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug)]
struct File {
    name: String,
    bytes: Vec<u8>,
    /// Where the data section starts (after the 8-byte length and the header).
    data_start: usize,
}

/// Tensors of safetensors files, by name. Built from bytes: reading files is the caller's job.
#[derive(Debug, Default)]
pub struct Checkpoint {
    files: Vec<File>,
    index: BTreeMap<String, (usize, TensorInfo)>,
    /// The key scheme, told from the keys on first use (files are all added by then).
    scheme: OnceLock<Scheme>,
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Checkpoint {
        Checkpoint::default()
    }

    /// Adds the safetensors file `name` (used in messages) with contents `bytes`. A tensor name in
    /// two files is an error.
    pub fn add_file(&mut self, name: impl Into<String>, bytes: Vec<u8>) -> Result<(), WeightError> {
        let name = name.into();
        let (header, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| WeightError::File {
            file: name.clone(),
            why: match e {
                safetensors::SafeTensorError::MetadataIncompleteBuffer => format!(
                    "truncated: its header lists more tensor data than its {} bytes hold",
                    bytes.len()
                ),
                e => e.to_string(),
            },
        })?;
        let i = self.files.len();
        let mut tensors: Vec<(String, TensorInfo)> = meta
            .tensors()
            .into_iter()
            .map(|(k, info)| (k, info.clone()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, info) in tensors {
            if let Some((j, _)) = self.index.get(&key) {
                return Err(WeightError::Duplicate {
                    key,
                    first: self.files[*j].name.clone(),
                    second: name,
                });
            }
            self.index.insert(key, (i, info));
        }
        self.files.push(File {
            name,
            bytes,
            data_start: 8 + header,
        });
        self.scheme = OnceLock::new();
        Ok(())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether a tensor `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The shape of tensor `key`, when present (no data is read).
    pub(crate) fn shape(&self, key: &str) -> Option<&[usize]> {
        self.index.get(key).map(|(_, info)| info.shape.as_slice())
    }

    /// The keys starting with `prefix`, in order.
    pub(crate) fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.index
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(prefix))
    }

    /// Whether some key starts with `prefix`.
    pub(crate) fn has_prefix(&self, prefix: &str) -> bool {
        self.keys_with_prefix(prefix).next().is_some()
    }

    /// The naming scheme of the keys.
    pub(crate) fn scheme(&self) -> &Scheme {
        self.scheme.get_or_init(|| Scheme::of(self))
    }

    /// Reads tensor `key` (for weight `weight`, named in errors) as f32.
    pub(crate) fn read(&self, key: &str, weight: &str) -> Result<Option<Stored>, WeightError> {
        let Some((f, info)) = self.index.get(key) else {
            return Ok(None);
        };
        let file = &self.files[*f];
        let (a, b) = info.data_offsets;
        let bytes = file
            .bytes
            .get(file.data_start + a..file.data_start + b)
            .ok_or_else(|| WeightError::File {
                file: file.name.clone(),
                why: format!("tensor `{key}` lies outside the file"),
            })?;
        let data: Vec<f32> = match info.dtype {
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            other => {
                return Err(WeightError::DType {
                    weight: weight.to_string(),
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(Some(Stored {
            shape: info.shape.clone(),
            data,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// A safetensors file of f32 tensors.
    pub(crate) fn file(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                (
                    n.to_string(),
                    TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn reads_tensors_across_files() {
        let mut c = Checkpoint::new();
        c.add_file("a", file(&[("x", vec![2], vec![1.0, 2.0])]))
            .unwrap();
        c.add_file("b", file(&[("y", vec![1, 1], vec![3.5])]))
            .unwrap();
        assert_eq!(c.len(), 2);
        let x = c.read("x", "w").unwrap().unwrap();
        assert_eq!((x.shape, x.data), (vec![2], vec![1.0, 2.0]));
        assert_eq!(c.read("y", "w").unwrap().unwrap().data, vec![3.5]);
        assert!(c.read("z", "w").unwrap().is_none());
        let e = c
            .add_file("c", file(&[("x", vec![1], vec![0.0])]))
            .unwrap_err();
        assert!(e.to_string().contains("`x` is in both a and c"), "{e}");
        assert!(c.add_file("d", b"not a file".to_vec()).is_err());
    }

    #[test]
    fn converts_half_precision() {
        let b: Vec<u8> = [bf16::from_f32(1.5), bf16::from_f32(-2.0)]
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::BF16, vec![2], &b).unwrap();
        let bytes = safetensors::serialize([("h", view)], None).unwrap();
        let mut c = Checkpoint::new();
        c.add_file("h", bytes).unwrap();
        assert_eq!(c.read("h", "w").unwrap().unwrap().data, vec![1.5, -2.0]);
    }
}
