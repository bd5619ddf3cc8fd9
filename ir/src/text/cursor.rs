//! A cursor over one line of the text form: the lexical pieces (words, integers, quoted strings,
//! value references, tensor types), each failing with the line and column it stopped at.

use super::{TextError, TextErrorKind};
use crate::{DType, TensorType};

/// A position in one line; `pos` is a byte offset into `text`.
#[derive(Debug, Clone)]
pub(super) struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    /// 1-based line number, for errors.
    line: usize,
}

/// Characters of a bare word: identifiers, numbers (`-1.5e-5`), `1f1b`, dotted names.
pub(super) fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')
}

impl<'a> Cursor<'a> {
    pub(super) fn new(text: &'a str, line: usize) -> Cursor<'a> {
        Cursor { text, pos: 0, line }
    }

    /// An error at the cursor.
    pub(super) fn err(&self, kind: TextErrorKind) -> TextError {
        self.err_at(self.pos, kind)
    }

    /// An error at byte offset `pos` of this line.
    pub(super) fn err_at(&self, pos: usize, kind: TextErrorKind) -> TextError {
        TextError {
            line: self.line,
            column: self.text[..pos.min(self.text.len())].chars().count() + 1,
            kind,
        }
    }

    /// "expected `what`", naming what is there instead.
    pub(super) fn expected(&self, what: &'static str) -> TextError {
        let rest = self.rest();
        let found = match rest.chars().next() {
            None => "end of line".to_string(),
            Some(c) if is_word_char(c) => {
                let w: String = rest.chars().take_while(|&c| is_word_char(c)).collect();
                format!("`{w}`")
            }
            Some(c) => format!("`{c}`"),
        };
        self.err(TextErrorKind::Expected {
            expected: what,
            found,
        })
    }

    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    pub(super) fn line(&self) -> usize {
        self.line
    }

    /// Moves past `bytes` bytes of the rest (a char boundary the caller found).
    pub(super) fn advance(&mut self, bytes: usize) {
        self.pos = (self.pos + bytes).min(self.text.len());
    }

    /// The rest of the line.
    pub(super) fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    pub(super) fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    pub(super) fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Whether only whitespace is left.
    pub(super) fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.rest().is_empty()
    }

    /// Consumes `c` (after whitespace) if it is next.
    pub(super) fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// Consumes `c` (after whitespace) or fails naming `what`.
    pub(super) fn expect(&mut self, c: char, what: &'static str) -> Result<(), TextError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    /// Consumes the keyword `kw` (after whitespace) if the next word is exactly it.
    pub(super) fn eat_keyword(&mut self, kw: &str) -> bool {
        self.skip_ws();
        let w = self.peek_word();
        if w == kw {
            self.pos += w.len();
            true
        } else {
            false
        }
    }

    fn peek_word(&self) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c| !is_word_char(c)).unwrap_or(rest.len());
        &rest[..end]
    }

    /// A bare word (after whitespace), possibly empty.
    pub(super) fn word(&mut self) -> &'a str {
        self.skip_ws();
        let w = self.peek_word();
        self.pos += w.len();
        w
    }

    /// An identifier: ASCII letters, digits and `_`, not starting with a digit.
    pub(super) fn ident(&mut self, what: &'static str) -> Result<&'a str, TextError> {
        self.skip_ws();
        let rest = self.rest();
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let w = &rest[..end];
        if crate::is_identifier(w) {
            self.pos += end;
            Ok(w)
        } else {
            Err(self.expected(what))
        }
    }

    /// A decimal integer of type `T`.
    pub(super) fn int<T: std::str::FromStr>(&mut self, what: &'static str) -> Result<T, TextError> {
        self.skip_ws();
        let rest = self.rest();
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        match rest[..end].parse() {
            Ok(v) if end > 0 => {
                self.pos += end;
                Ok(v)
            }
            _ if end > 0 => Err(self.err(TextErrorKind::TooLarge {
                what,
                text: rest[..end].to_string(),
            })),
            _ => Err(self.expected(what)),
        }
    }

    /// A JSON string literal (`"..."`, JSON escapes).
    pub(super) fn json_string(&mut self) -> Result<String, TextError> {
        let start = self.pos;
        let body = self.quoted()?;
        serde_json::from_str(body).map_err(|_| self.err_at(start, TextErrorKind::BadString))
    }

    /// A string as Rust's `{:?}` writes it (`"..."` with `\n`, `\"`, `\u{..}` escapes).
    pub(super) fn debug_string(&mut self) -> Result<String, TextError> {
        let start = self.pos;
        let body = self.quoted()?;
        unescape_debug(&body[1..body.len() - 1])
            .ok_or_else(|| self.err_at(start, TextErrorKind::BadString))
    }

    /// A double-quoted literal with backslash escapes, quotes included (not yet unescaped).
    fn quoted(&mut self) -> Result<&'a str, TextError> {
        self.skip_ws();
        let start = self.pos;
        if self.peek() != Some('"') {
            return Err(self.expected("a quoted string"));
        }
        let rest = self.rest();
        let mut escaped = false;
        for (i, c) in rest.char_indices().skip(1) {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    self.pos += i + 1;
                    return Ok(&self.text[start..self.pos]);
                }
                _ => {}
            }
        }
        Err(self.err(TextErrorKind::UnterminatedString))
    }

    /// A value reference `%n` or `%n.k`: (text id, output).
    pub(super) fn value_ref(&mut self) -> Result<(u64, u32), TextError> {
        self.expect('%', "a value such as `%3` or `%3.1`")?;
        let id = self.int("a node number after `%`")?;
        let out = if self.peek() == Some('.') {
            self.pos += 1;
            self.int("an output number after `.`")?
        } else {
            0
        };
        Ok((id, out))
    }

    /// A tensor type: `bf16[4096@ep, 7168] partial(tp)`.
    pub(super) fn tensor_type(&mut self) -> Result<TensorType, TextError> {
        self.skip_ws();
        let at = self.pos;
        let name = self.ident("a tensor type such as `bf16[4096@ep, 7168]`")?;
        let dtype = DType::parse(name)
            .ok_or_else(|| self.err_at(at, TextErrorKind::UnknownDType(name.to_string())))?;
        self.expect('[', "`[` after the dtype")?;
        let (mut shape, mut split) = (Vec::new(), Vec::new());
        if !self.eat(']') {
            loop {
                shape.push(self.int("a dimension size")?);
                let mut axes = Vec::new();
                if self.peek() == Some('@') {
                    self.pos += 1;
                    loop {
                        axes.push(self.ident("a mesh axis after `@`")?.to_string());
                        if self.peek() != Some('.') {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                split.push(axes);
                if self.eat(']') {
                    break;
                }
                self.expect(',', "`,` or `]` in the shape")?;
            }
        }
        let mut partial = Vec::new();
        if self.eat_keyword("partial") {
            self.expect('(', "`(` after `partial`")?;
            loop {
                partial.push(self.ident("a mesh axis in `partial(...)`")?.to_string());
                if self.eat(')') {
                    break;
                }
                self.expect(',', "`,` or `)` in `partial(...)`")?;
            }
        }
        Ok(TensorType {
            dtype,
            shape,
            split,
            partial,
        })
    }
}

/// Undoes Rust's `{:?}` escaping of a string's body; `None` for an escape it never writes.
fn unescape_debug(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            '0' => '\0',
            '\\' => '\\',
            '"' => '"',
            '\'' => '\'',
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
            }
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_strings_round_trip() {
        for s in [
            "plain",
            "a \"quoted\" name",
            "tab\tnew\nline\\",
            "nul\0 and \u{7f}",
            "é",
        ] {
            let printed = format!("{s:?}");
            let mut c = Cursor::new(&printed, 1);
            assert_eq!(c.debug_string().unwrap(), s, "{printed}");
            assert!(c.at_end());
        }
        assert!(Cursor::new(r#""bad \q""#, 1).debug_string().is_err());
        let e = Cursor::new(r#""open"#, 3).debug_string().unwrap_err();
        assert_eq!((e.line, e.column), (3, 1), "at the opening quote");
    }

    #[test]
    fn types_parse_as_they_print() {
        for t in [
            "bf16[4096@ep, 7168]",
            "f32[16, 8@dp.tp] partial(ep,tp)",
            "i32[]",
            "f16[1] partial(tp)",
        ] {
            let mut c = Cursor::new(t, 1);
            assert_eq!(c.tensor_type().unwrap().to_string(), t);
            assert!(c.at_end(), "{t}");
        }
    }

    #[test]
    fn type_errors_say_where_and_what() {
        let e = Cursor::new("q8[4]", 1).tensor_type().unwrap_err();
        assert_eq!(e.column, 1);
        assert!(matches!(e.kind, TextErrorKind::UnknownDType(ref d) if d == "q8"));
        let e = Cursor::new("f32[4@]", 1).tensor_type().unwrap_err();
        assert_eq!(e.column, 7);
        let e = Cursor::new("f32[99999999999999999999999]", 1)
            .tensor_type()
            .unwrap_err();
        assert!(matches!(e.kind, TextErrorKind::TooLarge { .. }), "{e}");
        let e = Cursor::new("f32[4 8]", 1).tensor_type().unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1, column 7: expected `,` or `]` in the shape, found `8`"
        );
    }

    #[test]
    fn value_refs() {
        let mut c = Cursor::new("%12.1, %3", 1);
        assert_eq!(c.value_ref().unwrap(), (12, 1));
        assert!(c.eat(','));
        assert_eq!(c.value_ref().unwrap(), (3, 0));
        assert!(Cursor::new("12", 1).value_ref().is_err());
    }
}
