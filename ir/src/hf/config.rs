//! Typed reads of a Hugging Face `config.json`, with errors naming the key.

use super::ImportError;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// Integers a config may hold are below this bound (2^31), so that products of two sizes (and of
/// a size and a sum of two) fit in a `u64` while building a graph.
pub const MAX_INT: u64 = 1 << 31;

/// A view of one JSON object of a config (the root, or a nested one such as DBRX's `ffn_config`),
/// remembering its key path for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Cfg<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'a str,
    /// The dotted paths of the keys read so far (see [`super::ignored`]), when tracked.
    seen: Option<&'a RefCell<BTreeSet<String>>>,
}

impl<'a> Cfg<'a> {
    /// Views `v`, which must be an object.
    pub fn root(v: &'a Value) -> Result<Cfg<'a>, ImportError> {
        match v {
            Value::Object(obj) => Ok(Cfg {
                obj,
                prefix: "",
                seen: None,
            }),
            _ => Err(ImportError::Key {
                key: "(root)".into(),
                why: "a config must be a JSON object".into(),
            }),
        }
    }

    /// Views `v`, recording in `seen` the path of every key read through it or its nested views.
    pub fn tracked(
        v: &'a Value,
        seen: &'a RefCell<BTreeSet<String>>,
    ) -> Result<Cfg<'a>, ImportError> {
        Ok(Cfg {
            seen: Some(seen),
            ..Cfg::root(v)?
        })
    }

    fn mark(&self, key: &str) {
        if let Some(s) = self.seen {
            s.borrow_mut().insert(self.path(key));
        }
    }

    /// The full dotted name of `key`.
    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}{key}", self.prefix)
        }
    }

    fn err(&self, key: &str, why: impl Into<String>) -> ImportError {
        ImportError::Key {
            key: self.path(key),
            why: why.into(),
        }
    }

    /// Marks `keys` as read: the parser knows they cannot change the function here (settings
    /// of an option that is off, values derived from keys it read).
    pub fn ack(&self, keys: &[&str]) {
        for k in keys {
            self.mark(k);
        }
    }

    /// The raw value, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.mark(key);
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Whether `key` is present with an explicit `null` (which some configs use to switch a part
    /// off, e.g. DeepSeek-V2-Lite's `q_lora_rank`), as opposed to absent.
    pub fn is_null(&self, key: &str) -> bool {
        self.mark(key);
        self.obj.get(key).is_some_and(Value::is_null)
    }

    /// A nested object (`None` when absent).
    pub fn sub(&self, key: &str, prefix: &'a str) -> Result<Option<Cfg<'a>>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(obj)) => Ok(Some(Cfg {
                obj,
                prefix,
                seen: self.seen,
            })),
            Some(_) => Err(self.err(key, "must be an object")),
        }
    }

    /// An optional non-negative integer, below [`MAX_INT`].
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match (v.as_u64(), v.as_i64(), v.as_f64()) {
                (Some(n), _, _) if n >= MAX_INT => Err(self.err(
                    key,
                    format!("is {n}; integers from 2^31 up are not supported"),
                )),
                (Some(n), _, _) => Ok(Some(n)),
                (None, Some(n), _) => {
                    Err(self.err(key, format!("is {n}; sizes cannot be negative")))
                }
                (None, None, Some(f)) if f.fract() == 0.0 && f >= 0.0 && f < MAX_INT as f64 => {
                    Ok(Some(f as u64))
                }
                (None, None, Some(f)) if f.fract() == 0.0 && f >= MAX_INT as f64 => Err(self.err(
                    key,
                    format!("is {f}; integers from 2^31 up are not supported"),
                )),
                _ => Err(self.err(key, format!("must be a non-negative integer, is {v}"))),
            },
        }
    }

    /// A required non-negative integer.
    pub fn u64(&self, key: &str) -> Result<u64, ImportError> {
        self.opt_u64(key)?
            .ok_or_else(|| self.err(key, "is missing"))
    }

    /// A required positive integer.
    pub fn pos(&self, key: &str) -> Result<u64, ImportError> {
        let n = self.u64(key)?;
        if n == 0 {
            return Err(self.err(key, "must be positive, is 0"));
        }
        Ok(n)
    }

    /// An optional positive integer.
    pub fn opt_pos(&self, key: &str) -> Result<Option<u64>, ImportError> {
        match self.opt_u64(key)? {
            Some(0) => Err(self.err(key, "must be positive, is 0")),
            other => Ok(other),
        }
    }

    /// The first present key of `keys` as a positive integer.
    pub fn pos_any(&self, keys: &[&str]) -> Result<u64, ImportError> {
        for k in keys {
            if self.has(k) {
                return self.pos(k);
            }
        }
        Err(self.err(
            keys[0],
            format!("is missing (also looked for {})", keys[1..].join(", ")),
        ))
    }

    /// An optional number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("must be a number, is {v}"))),
        }
    }

    /// A number with a default.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, ImportError> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    /// An optional boolean.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("must be true or false, is {v}"))),
        }
    }

    /// A boolean with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ImportError> {
        Ok(self.opt_bool(key)?.unwrap_or(default))
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, format!("must be a string, is {v}"))),
        }
    }

    /// An optional array of values.
    pub fn opt_array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.err(key, format!("must be an array, is {v}"))),
        }
    }

    /// An optional array of non-negative integers.
    pub fn opt_u64_list(&self, key: &str) -> Result<Option<Vec<u64>>, ImportError> {
        let Some(a) = self.opt_array(key)? else {
            return Ok(None);
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_u64().filter(|&n| n < MAX_INT).ok_or_else(|| {
                    self.err(
                        &format!("{key}[{i}]"),
                        format!("must be a non-negative integer below 2^31, is {v}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An error about `key` (for family-specific checks).
    pub fn invalid(&self, key: &str, why: impl Into<String>) -> ImportError {
        self.err(key, why)
    }
}
