//! Attribute values, the JSON data model written without JSON's punctuation: `{k=v, ...}`,
//! `[a, b]`, numbers as JSON writes them, `true`/`false`/`null`, and strings bare when that is
//! unambiguous (`softmax`, `ep`, `1f1b`), else as JSON strings (`"1.5"`, `"a b"`).

use super::cursor::{is_word_char, Cursor};
use super::{TextError, TextErrorKind};
use serde_json::Value as J;

/// How a bare word reads: a number when JSON reads it as one, `true`/`false`/`null`, else a string.
fn classify(word: &str) -> J {
    match word {
        "true" => J::Bool(true),
        "false" => J::Bool(false),
        "null" => J::Null,
        _ => match serde_json::from_str::<serde_json::Number>(word) {
            Ok(n) => J::Number(n),
            Err(_) => J::String(word.to_string()),
        },
    }
}

/// Whether `s` can be written bare and read back as the same string.
fn bare_ok(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_word_char) && classify(s) == J::String(s.to_string())
}

/// A string bare when it reads back as itself, else as a JSON string.
pub(crate) fn print_str(s: &str) -> String {
    if bare_ok(s) {
        s.to_string()
    } else {
        J::String(s.to_string()).to_string()
    }
}

/// Writes `v` in attribute syntax.
pub(crate) fn print_value(v: &J) -> String {
    match v {
        J::Object(m) => {
            let inner: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}={}", print_str(k), print_value(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        J::Array(a) => format!(
            "[{}]",
            a.iter().map(print_value).collect::<Vec<_>>().join(", ")
        ),
        J::String(s) => print_str(s),
        other => other.to_string(),
    }
}

/// A string: bare word or JSON string.
pub(super) fn parse_str(c: &mut Cursor<'_>, what: &'static str) -> Result<String, TextError> {
    c.skip_ws();
    if c.peek() == Some('"') {
        return c.json_string();
    }
    let w = c.word();
    if w.is_empty() {
        Err(c.expected(what))
    } else {
        Ok(w.to_string())
    }
}

/// One attribute value.
pub(super) fn parse_value(c: &mut Cursor<'_>) -> Result<J, TextError> {
    c.skip_ws();
    match c.peek() {
        Some('{') => parse_object(c).map(J::Object),
        Some('[') => {
            c.expect('[', "`[`")?;
            let mut items = Vec::new();
            if !c.eat(']') {
                loop {
                    items.push(parse_value(c)?);
                    if c.eat(']') {
                        break;
                    }
                    c.expect(',', "`,` or `]` in a list")?;
                }
            }
            Ok(J::Array(items))
        }
        Some('"') => c.json_string().map(J::String),
        _ => {
            let w = c.word();
            if w.is_empty() {
                Err(c.expected("an attribute value"))
            } else {
                Ok(classify(w))
            }
        }
    }
}

/// `{k=v, ...}`.
pub(super) fn parse_object(c: &mut Cursor<'_>) -> Result<serde_json::Map<String, J>, TextError> {
    c.expect('{', "`{`")?;
    let mut m = serde_json::Map::new();
    if c.eat('}') {
        return Ok(m);
    }
    loop {
        let at = {
            c.skip_ws();
            c.pos()
        };
        let k = parse_str(c, "an attribute name")?;
        c.expect('=', "`=` after the attribute name")?;
        let v = parse_value(c)?;
        if m.insert(k.clone(), v).is_some() {
            return Err(c.err_at(at, TextErrorKind::DuplicateAttr(k)));
        }
        if c.eat('}') {
            return Ok(m);
        }
        c.expect(',', "`,` or `}` in the attributes")?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(v: J) {
        let printed = print_value(&v);
        let mut c = Cursor::new(&printed, 1);
        assert_eq!(parse_value(&mut c).unwrap(), v, "{printed}");
        assert!(c.at_end(), "{printed}");
    }

    #[test]
    fn values_read_back_as_written() {
        round_trip(json!({"experts": 8, "score": "softmax", "scale": 1.0, "normalize": true}));
        round_trip(json!({"mask": {"sliding": 4096}, "eps": 1e-5, "neg": -0.0, "big": 1e300}));
        round_trip(json!({"schedule": "1f1b", "layout": [2, 2], "none": null, "empty": []}));
        // Strings that would read as something else are quoted.
        round_trip(json!({"a": "1.5", "b": "true", "c": "", "d": "two words", "e": "x=y,}"}));
        round_trip(json!({"key with space": {"nested": {}}}));
        assert_eq!(
            print_value(&json!({"axis": "ep", "v": "1e5"})),
            r#"{axis=ep, v="1e5"}"#
        );
    }

    #[test]
    fn malformed_attributes_are_located() {
        let e = parse_value(&mut Cursor::new("{k=1, k=2}", 4)).unwrap_err();
        assert_eq!((e.line, e.column), (4, 7));
        assert!(matches!(e.kind, TextErrorKind::DuplicateAttr(ref k) if k == "k"));
        let e = parse_value(&mut Cursor::new("{k 1}", 1)).unwrap_err();
        assert_eq!(e.column, 4);
        let e = parse_value(&mut Cursor::new("[1, 2", 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1, column 6: expected `,` or `]` in a list, found end of line"
        );
    }
}
