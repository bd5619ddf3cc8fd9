//! `--prompt TEXT --tokenizer tokenizer.json`: text to token ids and ids back to text with a
//! Hugging Face `tokenizer.json` (the `tokenizers` crate; special tokens added as transformers
//! adds them by default).

use miette::{miette, Result};
use moe_backend::TokenIds;
use std::path::Path;

/// A loaded tokenizer, named by its file in messages.
pub struct Tok {
    inner: tokenizers::Tokenizer,
    file: String,
}

impl std::fmt::Debug for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tok({})", self.file)
    }
}

impl Tok {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Tok> {
        let file = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| miette!("{file}: not a tokenizer.json the tokenizers crate reads: {e}"))?;
        Ok(Tok { inner, file })
    }

    /// `text` as one sequence of ids.
    pub fn encode(&self, text: &str) -> Result<TokenIds> {
        let e = self
            .inner
            .encode(text, true)
            .map_err(|e| miette!("{}: cannot encode the prompt: {e}", self.file))?;
        let ids: Vec<i64> = e.get_ids().iter().map(|&i| i64::from(i)).collect();
        if ids.is_empty() {
            return Err(miette!("{}: the prompt encodes to no tokens", self.file));
        }
        Ok(TokenIds {
            batch: 1,
            seq: ids.len(),
            ids,
        })
    }

    /// The text of one id (its token when it decodes to nothing).
    pub fn decode(&self, id: usize) -> String {
        let Ok(id) = u32::try_from(id) else {
            return String::new();
        };
        match self.inner.decode(&[id], false) {
            Ok(s) if !s.is_empty() => s,
            _ => self.inner.id_to_token(id).unwrap_or_default(),
        }
    }
}
