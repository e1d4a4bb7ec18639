//! A YAML document as a tree of located nodes.
//!
//! serde stops at the first error it meets, but a routes file must report every mistake at
//! once. So the file is first read (with serde-saphyr) into this loosely typed tree, where
//! every node keeps its line and column; `config` then walks the tree and collects all the
//! errors it finds. Duplicate keys are kept here so that validation can report each one.
//! This module knows nothing of the routes file's schema.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Line and column (1-based) of a node in the source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

/// A YAML value with its position.
#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; a key may appear twice (reported by validation).
    Map(Vec<(Key, Node)>),
}

/// A mapping key: always read as text (a YAML `1:` key becomes `"1"`).
#[derive(Debug, Clone)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

impl Value {
    /// What kind of value this is, for "found ..." in error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// A short rendering of the value for error messages.
    pub fn show(&self) -> String {
        match &self.value {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => quote(s),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }
}

/// How many characters of a value an error message quotes.
pub const QUOTE_CHARS: usize = 60;

/// A value quoted for an error message, as Rust quotes strings, cut after [`QUOTE_CHARS`]
/// characters with its full size given: `"(aaaa…"… (2000001 bytes)`. A message about a
/// 2 MB regex stays one line long.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("{:?}… ({} bytes)", &s[..end], s.len()),
        None => format!("{s:?}"),
    }
}

/// A parse failure of the YAML itself (not of the schema).
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses a YAML document into a located tree.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut options = serde_saphyr::Options::default();
    // Duplicates are passed through so that validation reports every one, with its place.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    options.with_snippet = false;
    if text.trim().is_empty() {
        return Ok(Node {
            pos: Pos { line: 1, col: 1 },
            value: Value::Null,
        });
    }
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
        Ok(root) => Ok(into_node(root)),
        Err(e) => {
            let mut pos = e
                .location()
                .map(|l| Pos {
                    line: l.line() as u32,
                    col: l.column() as u32,
                })
                .unwrap_or_default();
            let e = e.without_snippet();
            let message = if matches!(e, serde_saphyr::Error::MultipleDocuments { .. }) {
                // Told at the `---` that starts it (the parser points at its content).
                let start = text
                    .lines()
                    .take(pos.line as usize)
                    .enumerate()
                    .filter(|(_, l)| l.starts_with("---"))
                    .last()
                    .map(|(i, _)| i);
                if let Some(i) = start {
                    pos = Pos {
                        line: i as u32 + 1,
                        col: 1,
                    };
                }
                "a second document starts here; allowed: one document per file".into()
            } else {
                // The rendered message may repeat the location; keep its first line only.
                let message = e.to_string();
                message.lines().next().unwrap_or("invalid YAML").to_string()
            };
            Err(SyntaxError { pos, message })
        }
    }
}

/// A hint for a common mistake behind a syntax error: a plain value holding `{` or `}`
/// inside a flow mapping (`match: { path: /api/orders/{id} }`), where the braces end the
/// mapping. Looks at the error's line and the one before; `None` when neither has one.
pub fn flow_brace_hint(text: &str, pos: Pos) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = (pos.line as usize).checked_sub(1)?;
    let candidates = [Some(at), at.checked_sub(1)];
    for line in candidates
        .into_iter()
        .flatten()
        .filter_map(|i| lines.get(i))
    {
        let Some(open) = line.find('{') else { continue };
        // Every `key: value` after the mapping's opening brace.
        let mut rest = &line[open + 1..];
        while let Some(colon) = rest.find(": ") {
            let key = rest[..colon]
                .rsplit(|c: char| c == '{' || c == ',' || c.is_whitespace())
                .next()
                .unwrap_or("");
            let value = rest[colon + 2..].trim_start();
            let plain = !value.starts_with(['"', '\'', '{', '[']);
            let token = value
                .split(|c: char| c == ',' || c.is_whitespace())
                .next()
                .unwrap_or("");
            // The value ends where a `}` closes more than it opened: the mapping's own.
            let mut depth = 0usize;
            let end = token
                .char_indices()
                .find_map(|(i, c)| match c {
                    '{' => {
                        depth += 1;
                        None
                    }
                    '}' if depth == 0 => Some(i),
                    '}' => {
                        depth -= 1;
                        None
                    }
                    _ => None,
                })
                .unwrap_or(token.len());
            let token = &token[..end];
            if plain && !key.is_empty() && token.contains('{') {
                return Some(format!(
                    "hint: in a flow mapping ({{ ... }}) a value holding {{ or }} must be quoted: {key}: \"{token}\""
                ));
            }
            rest = &rest[colon + 2..];
        }
    }
    None
}

/// The serde-facing shape; converted into `Node` once read.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<String>, Spanned<Raw>)>),
}

fn into_node(s: Spanned<Raw>) -> Node {
    let pos = Pos {
        line: s.referenced.line() as u32,
        col: s.referenced.column() as u32,
    };
    let value = match s.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(items.into_iter().map(into_node).collect()),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    (
                        Key {
                            pos: Pos {
                                line: k.referenced.line() as u32,
                                col: k.referenced.column() as u32,
                            },
                            name: k.value,
                        },
                        into_node(v),
                    )
                })
                .collect(),
        ),
    };
    Node { pos, value }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            out.push(item);
        }
        Ok(Raw::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            let value = map.next_value::<Spanned<Raw>>()?;
            let key = Spanned {
                value: key.value.0,
                referenced: key.referenced,
                defined: key.defined,
            };
            out.push((key, value));
        }
        Ok(Raw::Map(out))
    }
}

/// A mapping key as text, whatever scalar type YAML gave it.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<KeyText, E> {
                Ok(KeyText(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Byte offset of a (1-based line, 1-based character column) position.
pub fn offset(text: &str, pos: Pos) -> Option<usize> {
    let mut line_start = 0;
    for _ in 1..pos.line {
        line_start += text[line_start..].find('\n')? + 1;
    }
    let line = &text[line_start..];
    let col = (pos.col as usize).checked_sub(1)?;
    let within = line
        .char_indices()
        .nth(col)
        .map(|(i, _)| i)
        .or((col == line.chars().count()).then_some(line.len()))?;
    Some(line_start + within)
}

/// Length in bytes of the scalar token at the start of `s`: quoted, or plain up to the
/// first space, comma, bracket, comment or line end.
pub fn scalar_len(s: &str) -> usize {
    let b = s.as_bytes();
    match b.first() {
        Some(b'"') => {
            let mut i = 1;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    b'"' => return i + 1,
                    _ => i += 1,
                }
            }
            b.len()
        }
        Some(b'\'') => {
            let mut i = 1;
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    return i + 1;
                }
                i += 1;
            }
            b.len()
        }
        _ => b
            .iter()
            .position(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b',' | b'}' | b']' | b'#'))
            .unwrap_or(b.len()),
    }
}

/// The scalar's source text at `pos`, as written (quotes included).
pub fn scalar_at(text: &str, pos: Pos) -> Option<&str> {
    let start = offset(text, pos)?;
    Some(&text[start..start + scalar_len(&text[start..])])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_and_duplicates() {
        let doc = parse("a: 1\nb:\n  c: [x, 2.5]\na: true\n").unwrap();
        let Value::Map(entries) = &doc.value else {
            panic!("root is a map")
        };
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].0.name, "a");
        assert_eq!(entries[2].0.name, "a");
        assert_eq!(entries[2].0.pos.line, 4);
        let Value::Map(inner) = &entries[1].1.value else {
            panic!("b is a map")
        };
        assert_eq!(inner[0].1.pos, Pos { line: 3, col: 6 });
        let Value::Seq(items) = &inner[0].1.value else {
            panic!("c is a list")
        };
        assert!(matches!(items[0].value, Value::Str(ref s) if s == "x"));
        assert!(matches!(items[1].value, Value::Float(f) if f == 2.5));
    }

    #[test]
    fn hints_at_braces_in_a_flow_mapping() {
        let text = "routes:\n  - name: a\n    match: { path: /api/orders/{id}, methods: [GET] }\n";
        let e = parse(text).unwrap_err();
        let hint = flow_brace_hint(text, e.pos).expect("a hint");
        assert!(hint.contains("path: \"/api/orders/{id}\""), "{hint}");
        assert_eq!(
            flow_brace_hint("a: {b: c}\n", Pos { line: 1, col: 1 }),
            None
        );
        let hint = flow_brace_hint("m: {path: /f/{*rest}}\n", Pos { line: 1, col: 1 });
        assert!(hint.unwrap().ends_with("path: \"/f/{*rest}\""));
        assert_eq!(
            flow_brace_hint("a: {b: '/x/{id}'}\n", Pos { line: 1, col: 1 }),
            None
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
    }
}
