//! Reading arrays and token ids from bytes: NumPy `.npy` (v1-v3, little-endian integers and
//! floats, C order), safetensors (integer tensors by name) and JSON (`[[ids]]`, `[ids]`, or an
//! object of those by input name). `what` (a file name) is named in every error.

use super::{InputError, TokenIds};
use safetensors::{Dtype, SafeTensors};

/// The values of an array.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayData {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// An n-dimensional array, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

fn err(what: &str, why: impl Into<String>) -> InputError {
    InputError::Parse {
        what: what.to_string(),
        why: why.into(),
    }
}

/// The value of `key` in a `.npy` header dict (`'key': value,`), as text.
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// Reads a `.npy` file's bytes.
pub fn npy(bytes: &[u8], what: &str) -> Result<Array, InputError> {
    let bad = |why: &str| err(what, format!("not a NumPy .npy array: {why}"));
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or_else(|| bad("no \\x93NUMPY magic"))?;
    let (&major, rest) = rest.split_first().ok_or_else(|| bad("truncated"))?;
    let rest = rest.get(1..).ok_or_else(|| bad("truncated"))?;
    let (len, rest) = match major {
        1 => {
            let b = rest.get(..2).ok_or_else(|| bad("truncated"))?;
            (u16::from_le_bytes([b[0], b[1]]) as usize, &rest[2..])
        }
        2 | 3 => {
            let b = rest.get(..4).ok_or_else(|| bad("truncated"))?;
            (
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                &rest[4..],
            )
        }
        v => return Err(bad(&format!("format version {v}"))),
    };
    let header = rest.get(..len).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let data = &rest[len..];
    let descr = header_field(header, "descr")
        .map(|d| d.trim_matches(['\'', '"']))
        .ok_or_else(|| bad("no descr"))?;
    if header_field(header, "fortran_order") == Some("True") {
        return Err(err(
            what,
            "Fortran-order arrays are not supported (save it C-contiguous)",
        ));
    }
    let shape_text = header_field(header, "shape").ok_or_else(|| bad("no shape"))?;
    let shape = shape_text
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad("shape is not a tuple of sizes"))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape too large"))?;
    let (kind, size) = match descr.strip_prefix(['<', '|']) {
        Some(t) if t.len() >= 2 => (t.as_bytes()[0], t[1..].parse::<usize>().unwrap_or(0)),
        _ => {
            return Err(err(
                what,
                format!("dtype `{descr}` is not supported (little-endian integers or floats)"),
            ))
        }
    };
    let need = n.checked_mul(size).ok_or_else(|| bad("shape too large"))?;
    if data.len() < need {
        return Err(err(
            what,
            format!(
                "truncated: shape {shape:?} of `{descr}` needs {need} data bytes, the file has {}",
                data.len()
            ),
        ));
    }
    let data = &data[..need];
    let le = |c: &[u8]| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(b)
    };
    let values = match (kind, size) {
        (b'i', 1 | 2 | 4 | 8) => ArrayData::Int(
            data.chunks_exact(size)
                .map(|c| {
                    let shift = 64 - 8 * size as u32;
                    ((le(c) << shift) as i64) >> shift
                })
                .collect(),
        ),
        (b'u', 1 | 2 | 4 | 8) => ArrayData::Int(
            data.chunks_exact(size)
                .map(|c| i64::try_from(le(c)).unwrap_or(i64::MAX))
                .collect(),
        ),
        (b'f', 4) => ArrayData::Float(
            data.chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        (b'f', 8) => ArrayData::Float(
            data.chunks_exact(8)
                .map(|c| f64::from_bits(le(c)))
                .collect(),
        ),
        _ => {
            return Err(err(
                what,
                format!("dtype `{descr}` is not supported (little-endian integers or floats)"),
            ))
        }
    };
    Ok(Array {
        shape,
        data: values,
    })
}

/// Token ids from an array: integers, `[seq]` (one sequence) or `[batch, seq]`.
pub fn ids_of(a: Array, what: &str) -> Result<TokenIds, InputError> {
    let ArrayData::Int(ids) = a.data else {
        return Err(err(
            what,
            "token ids must be integers, this array holds floats",
        ));
    };
    let (batch, seq) = match a.shape[..] {
        [s] => (1, s),
        [b, s] => (b, s),
        ref other => {
            return Err(err(
                what,
                format!("token ids are [batch, seq] (or [seq]), this array is {other:?}"),
            ))
        }
    };
    Ok(TokenIds { batch, seq, ids })
}

/// The integer tensors of a safetensors file, as token ids by tensor name.
pub fn safetensors_ids(bytes: &[u8], what: &str) -> Result<Vec<(String, TokenIds)>, InputError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| err(what, e.to_string()))?;
    let mut out = Vec::new();
    let mut names = st.names();
    names.sort();
    for name in names {
        let t = st.tensor(name).map_err(|e| err(what, e.to_string()))?;
        let b = t.data();
        let ids: Vec<i64> = match t.dtype() {
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            Dtype::I32 => b
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            Dtype::U32 => b
                .chunks_exact(4)
                .map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            d => {
                return Err(err(
                    what,
                    format!("tensor `{name}` has dtype {d:?}; token ids are I64, I32 or U32"),
                ))
            }
        };
        let a = Array {
            shape: t.shape().to_vec(),
            data: ArrayData::Int(ids),
        };
        out.push((
            name.to_string(),
            ids_of(a, &format!("{what}: tensor `{name}`"))?,
        ));
    }
    if out.is_empty() {
        return Err(err(what, "holds no tensor"));
    }
    Ok(out)
}

/// Token ids from JSON: `[[ids], ...]`, `[ids]`, or `{"name": those, ...}` by input name (keys
/// holding no array are skipped).
pub fn json_ids(text: &str, what: &str) -> Result<Vec<(Option<String>, TokenIds)>, InputError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| err(what, format!("not JSON: {e}")))?;
    let one = |v: &serde_json::Value, path: &str| -> Result<TokenIds, InputError> {
        let rows: Vec<&serde_json::Value> = match v {
            serde_json::Value::Array(a) if a.iter().all(|x| x.is_array()) && !a.is_empty() => {
                a.iter().collect()
            }
            serde_json::Value::Array(_) => vec![v],
            _ => {
                return Err(err(
                    what,
                    format!("{path}: token ids are an array of arrays of integers"),
                ))
            }
        };
        let mut ids = Vec::new();
        let mut seq = None;
        for (b, row) in rows.iter().enumerate() {
            let row = row.as_array().map(Vec::as_slice).unwrap_or_default();
            if *seq.get_or_insert(row.len()) != row.len() {
                return Err(err(
                    what,
                    format!(
                        "{path}[{b}] has {} ids, the first row {}",
                        row.len(),
                        seq.unwrap_or(0)
                    ),
                ));
            }
            for (s, x) in row.iter().enumerate() {
                ids.push(x.as_i64().ok_or_else(|| {
                    err(what, format!("{path}[{b}][{s}] = {x} is not an integer"))
                })?);
            }
        }
        Ok(TokenIds {
            batch: rows.len(),
            seq: seq.unwrap_or(0),
            ids,
        })
    };
    match &v {
        // Keys of other values (a prompt's text beside its ids) are not ids.
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(_, x)| x.is_array())
            .map(|(k, x)| Ok((Some(k.clone()), one(x, k)?)))
            .collect(),
        _ => Ok(vec![(None, one(&v, "ids")?)]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn npy_ints_and_floats() {
        let data: Vec<u8> = [1i64, -2, 3, 4]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = npy(&npy_bytes("<i8", "(2, 2)", &data), "x.npy").unwrap();
        assert_eq!(a.shape, [2, 2]);
        assert_eq!(a.data, ArrayData::Int(vec![1, -2, 3, 4]));
        let data: Vec<u8> = [1.5f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = npy(&npy_bytes("<f4", "(2,)", &data), "x.npy").unwrap();
        assert_eq!(a.data, ArrayData::Float(vec![1.5, 2.0]));
        let data: Vec<u8> = [-1i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = ids_of(npy(&npy_bytes("<i4", "(2,)", &data), "x").unwrap(), "x").unwrap();
        assert_eq!((t.batch, t.seq, t.ids), (1, 2, vec![-1, 7]));
        let e = npy(&npy_bytes("<i8", "(2, 2)", &data), "ids.npy").unwrap_err();
        assert!(
            e.to_string().contains("ids.npy") && e.to_string().contains("truncated"),
            "{e}"
        );
        assert!(npy(b"garbage", "g.npy").is_err());
    }

    #[test]
    fn json_forms() {
        let t = json_ids("[[1, 2], [3, 4]]", "j").unwrap();
        assert_eq!(t[0].1.ids, [1, 2, 3, 4]);
        assert_eq!((t[0].1.batch, t[0].1.seq), (2, 2));
        let t = json_ids("[5, 6, 7]", "j").unwrap();
        assert_eq!((t[0].1.batch, t[0].1.seq), (1, 3));
        let t = json_ids(r#"{"decoder_input_ids": [[1]]}"#, "j").unwrap();
        assert_eq!(t[0].0.as_deref(), Some("decoder_input_ids"));
        let e = json_ids("[[1, 2], [3]]", "in.json").unwrap_err();
        assert!(e.to_string().contains("in.json"), "{e}");
        assert!(json_ids("[[1.5]]", "j").is_err());
    }
}
