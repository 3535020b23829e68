//! The format-neutral config tree: [`parse`] turns YAML (via `saphyr`'s `MarkedYaml`) or TOML (via
//! `toml::de::DeTable`) into a [`Node`] in which every value and every map key knows its line and
//! column, and maps keep the order of the file. Syntax errors, duplicate keys and YAML features
//! the config does not use (several documents, custom tags, non-scalar keys) are rejected here.

use std::borrow::Cow;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use toml::de::{DeTable, DeValue};

use super::Format;
use super::error::{ConfigError, Pos};

/// Nesting deeper than this is rejected (it would only be a mistake or an attack).
const MAX_DEPTH: usize = 64;

/// A value with its position in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where the value starts.
    pub pos: Pos,
}

/// A map key with its position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key's text.
    pub name: String,
    /// Where the key starts.
    pub pos: Pos,
}

/// A config value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// YAML `~`/`null`/nothing (TOML has no null).
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string (TOML dates and times also end up here, as written).
    Str(String),
    /// A list.
    Seq(Vec<Node>),
    /// A map, in file order.
    Map(Vec<(Key, Node)>),
}

impl Node {
    /// A node.
    pub fn new(value: Value, pos: Pos) -> Node {
        Node { value, pos }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self.value {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The list's items, if this is a list.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The map's entries, if this is a map.
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value under `key`, if this is a map that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// What this is, for "expected X, found Y" messages: `a string "yes"`, `an integer 5`,
    /// `a boolean true`, `a list`, `a map`, `null`.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "null".to_string(),
            Value::Bool(b) => format!("a boolean {b}"),
            Value::Int(i) => format!("an integer {i}"),
            Value::Float(f) => format!("a number {f}"),
            Value::Str(s) => {
                const MAX: usize = 40;
                if s.chars().count() > MAX {
                    let short: String = s.chars().take(MAX).collect();
                    format!("a string {:?}…", short)
                } else {
                    format!("a string {s:?}")
                }
            }
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a map".to_string(),
        }
    }
}

/// Parse `text` as `format` into a tree. Errors carry the position but no file (the caller
/// fills it in; see [`ConfigError::file`]) and an empty key path.
pub(crate) fn parse(text: &str, format: Format) -> Result<Node, ConfigError> {
    match format {
        Format::Yaml => parse_yaml(text),
        Format::Toml => parse_toml(text),
    }
}

fn err(pos: Pos, message: impl Into<String>) -> ConfigError {
    ConfigError::new(None, Some(pos), "", message)
}

// ---------------------------------------------------------------------------------------------
// YAML

fn parse_yaml(text: &str) -> Result<Node, ConfigError> {
    // Before loading: the loader copies every alias, so a bomb must be stopped first.
    super::aliases::check(text).map_err(|(pos, message)| err(pos, message))?;
    let docs = match MarkedYaml::load_from_str(text) {
        Ok(docs) => docs,
        Err(e) => {
            let m = e.marker();
            let pos = Pos::new(m.line(), m.col() + 1);
            let message = if e.info() == "duplicated key in mapping" {
                match key_at(text, m.index()) {
                    Some(k) => format!("duplicate key {k:?}"),
                    None => "duplicate key".to_string(),
                }
            } else {
                format!("invalid YAML: {}", e.info())
            };
            return Err(err(pos, message));
        }
    };
    let mut docs = docs.into_iter();
    let Some(doc) = docs.next() else {
        return Ok(Node::new(Value::Null, Pos::new(1, 1)));
    };
    if let Some(second) = docs.next() {
        return Err(err(
            yaml_pos(&second),
            "a config file must hold a single YAML document (found a second one)",
        ));
    }
    yaml_node(text, &doc, 0)
}

fn yaml_pos(y: &MarkedYaml<'_>) -> Pos {
    let m = y.span.start;
    Pos::new(m.line(), m.col() + 1)
}

/// The key written at character `index` of `text` (for the duplicate-key message): a plain key
/// up to the `:`, or a quoted one.
fn key_at(text: &str, index: usize) -> Option<String> {
    let rest: String = text
        .chars()
        .skip(index)
        .take_while(|&c| c != '\n')
        .collect();
    let key = if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next()?
    } else if let Some(q) = rest.strip_prefix('\'') {
        q.split('\'').next()?
    } else {
        rest.split([':', ',', '}']).next()?.trim_end()
    };
    (!key.is_empty()).then(|| key.to_string())
}

fn yaml_node(text: &str, y: &MarkedYaml<'_>, depth: usize) -> Result<Node, ConfigError> {
    let pos = yaml_pos(y);
    if depth > MAX_DEPTH {
        return Err(err(pos, "nesting is too deep"));
    }
    let value = match &y.data {
        YamlData::Value(s) => scalar_value(s),
        YamlData::Representation(s, _, _) => Value::Str(s.to_string()),
        YamlData::Sequence(items) => Value::Seq(
            items
                .iter()
                .map(|i| yaml_node(text, i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut entries: Vec<(Key, Node)> = Vec::with_capacity(map.len());
            for (k, v) in map.iter() {
                let key = yaml_key(text, k)?;
                if entries.iter().any(|(e, _)| e.name == key.name) {
                    return Err(err(key.pos, format!("duplicate key {:?}", key.name)));
                }
                let value = yaml_node(text, v, depth + 1)?;
                entries.push((key, value));
            }
            Value::Map(entries)
        }
        YamlData::Tagged(tag, _) => {
            return Err(err(
                pos,
                format!("YAML tags are not supported (found {tag})"),
            ));
        }
        YamlData::Alias(_) => return Err(err(pos, "unknown YAML alias")),
        YamlData::BadValue => return Err(err(pos, "invalid YAML value")),
    };
    Ok(Node::new(value, pos))
}

fn scalar_value(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Int(*i),
        Scalar::FloatingPoint(f) => Value::Float(f.into_inner()),
        Scalar::String(s) => Value::Str(s.to_string()),
    }
}

/// A mapping key as text. A non-string scalar key (`80:`, `true:`) is taken as written.
fn yaml_key(text: &str, k: &MarkedYaml<'_>) -> Result<Key, ConfigError> {
    let pos = yaml_pos(k);
    let name = match &k.data {
        YamlData::Value(Scalar::String(s)) => s.to_string(),
        YamlData::Representation(s, _, _) => s.to_string(),
        YamlData::Value(_) => {
            let (start, end) = (k.span.start.index(), k.span.end.index());
            let raw: String = text
                .chars()
                .skip(start)
                .take(end.saturating_sub(start))
                .collect();
            let raw = raw.trim();
            if raw.is_empty() {
                return Err(err(pos, "a map key must be a string (found an empty key)"));
            }
            raw.to_string()
        }
        _ => return Err(err(pos, "a map key must be a string")),
    };
    Ok(Key { name, pos })
}

// ---------------------------------------------------------------------------------------------
// TOML

/// Turns byte offsets into 1-based line and column (columns in characters).
struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset of the start of each line.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> LineIndex<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    fn pos(&self, offset: usize) -> Pos {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = self.text[start..offset].chars().count() + 1;
        Pos::new(line, col)
    }
}

fn parse_toml(text: &str) -> Result<Node, ConfigError> {
    let index = LineIndex::new(text);
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let pos = index.pos(e.span().map_or(0, |s| s.start));
            return Err(err(
                pos,
                format!("invalid TOML: {}", e.message().trim_end()),
            ));
        }
    };
    let entries = toml_table(&index, root.get_ref(), 0)?;
    Ok(Node::new(Value::Map(entries), Pos::new(1, 1)))
}

fn toml_table(
    index: &LineIndex<'_>,
    table: &DeTable<'_>,
    depth: usize,
) -> Result<Vec<(Key, Node)>, ConfigError> {
    // The table is sorted by key; put it back in file order.
    let mut items: Vec<_> = table.iter().collect();
    items.sort_by_key(|(k, _)| k.span().start);
    let mut entries = Vec::with_capacity(items.len());
    for (k, v) in items {
        let key = Key {
            name: k.get_ref().to_string(),
            pos: index.pos(k.span().start),
        };
        entries.push((key, toml_node(index, v, depth + 1)?));
    }
    Ok(entries)
}

fn toml_node(
    index: &LineIndex<'_>,
    v: &toml::Spanned<DeValue<'_>>,
    depth: usize,
) -> Result<Node, ConfigError> {
    let pos = index.pos(v.span().start);
    if depth > MAX_DEPTH {
        return Err(err(pos, "nesting is too deep"));
    }
    let value = match v.get_ref() {
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits: Cow<'_, str> = if i.as_str().contains('_') {
                Cow::Owned(i.as_str().replace('_', ""))
            } else {
                Cow::Borrowed(i.as_str())
            };
            match i64::from_str_radix(&digits, i.radix()) {
                Ok(n) => Value::Int(n),
                Err(_) => return Err(err(pos, format!("integer {i} is out of range"))),
            }
        }
        DeValue::Float(f) => match toml_float(f.as_str()) {
            Some(x) => Value::Float(x),
            None => return Err(err(pos, format!("invalid float {}", f.as_str()))),
        },
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::Str(d.to_string()),
        DeValue::Array(items) => Value::Seq(
            items
                .iter()
                .map(|i| toml_node(index, i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => Value::Map(toml_table(index, t, depth)?),
    };
    Ok(Node::new(value, pos))
}

fn toml_float(s: &str) -> Option<f64> {
    let s = s.replace('_', "");
    match s.trim_start_matches(['+', '-']) {
        "inf" | "nan" => {
            let neg = s.starts_with('-');
            let x = if s.ends_with("inf") {
                f64::INFINITY
            } else {
                f64::NAN
            };
            Some(if neg { -x } else { x })
        }
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Node {
        match parse(text, Format::Yaml) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }

    fn toml(text: &str) -> Node {
        match parse(text, Format::Toml) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }

    fn yaml_err(text: &str) -> String {
        parse(text, Format::Yaml).unwrap_err().to_string()
    }

    fn toml_err(text: &str) -> String {
        parse(text, Format::Toml).unwrap_err().to_string()
    }

    /// The tree without positions, as a compact string.
    fn shape(n: &Node) -> String {
        match &n.value {
            Value::Null => "~".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format!("{f:?}"),
            Value::Str(s) => format!("{s:?}"),
            Value::Seq(items) => {
                let v: Vec<_> = items.iter().map(shape).collect();
                format!("[{}]", v.join(","))
            }
            Value::Map(entries) => {
                let v: Vec<_> = entries
                    .iter()
                    .map(|(k, v)| format!("{}:{}", k.name, shape(v)))
                    .collect();
                format!("{{{}}}", v.join(","))
            }
        }
    }

    #[test]
    fn yaml_values_and_positions() {
        let n =
            yaml("b: 1\na:\n  - x\n  - \"y\"\n  - 1.5\n  - ~\n  - true\nc: { é: 2, d: 0x10 }\n");
        assert_eq!(shape(&n), r#"{b:1,a:["x","y",1.5,~,true],c:{é:2,d:16}}"#);
        let map = n.as_map().unwrap();
        assert_eq!(map[1].0.pos, Pos::new(2, 1));
        let seq = map[1].1.as_seq().unwrap();
        assert_eq!(seq[1].pos, Pos::new(4, 5));
        let c = map[2].1.as_map().unwrap();
        assert_eq!(c[1].0.pos, Pos::new(8, 12));
        assert_eq!(c[1].1.pos, Pos::new(8, 15));
        assert_eq!(n.get("b").and_then(Node::as_int), Some(1));
    }

    #[test]
    fn yaml_non_string_keys_as_written() {
        let n = yaml("80: a\ntrue: b\n1.50: c\n");
        assert_eq!(shape(&n), r#"{80:"a",true:"b",1.50:"c"}"#);
    }

    #[test]
    fn yaml_duplicate_key_at_second() {
        assert_eq!(
            yaml_err("a: 1\nb: 2\na: 3\n"),
            "<embedded default>:3:1: duplicate key \"a\""
        );
        assert_eq!(
            yaml_err("x:\n  a: 1\n  \"a\": 3\n"),
            "<embedded default>:3:3: duplicate key \"a\""
        );
        assert_eq!(
            yaml_err("x: {k: 1, k: 2}\n"),
            "<embedded default>:1:11: duplicate key \"k\""
        );
        // Different YAML values, same text.
        assert_eq!(
            yaml_err("1: a\n\"1\": b\n"),
            "<embedded default>:2:1: duplicate key \"1\""
        );
    }

    #[test]
    fn yaml_errors() {
        assert_eq!(
            yaml_err("a: 1\n---\nb: 2\n"),
            "<embedded default>:3:1: a config file must hold a single YAML document (found a second one)"
        );
        assert!(yaml_err("a: [1\n").starts_with("<embedded default>:2:1: invalid YAML: "));
        assert!(yaml_err("a: !foo 1\n").contains("YAML tags are not supported"));
        assert!(yaml_err("? [a]\n: 1\n").contains("a map key must be a string"));
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            yaml_err(&deep),
            "<embedded default>:1:66: nesting is too deep"
        );
        assert_eq!(yaml("").value, Value::Null);
        assert_eq!(yaml("# only a comment\n").value, Value::Null);
    }

    #[test]
    fn yaml_alias_bomb_through_mapping_keys_is_refused_before_loading() {
        // Every other level hides its copies in a mapping key, which saphyr's own budget counts
        // as one node. At 20 levels (810 bytes) that was 9^10 nodes and 3 GB; 8 levels keep the
        // old behaviour affordable (it loaded 66,000 nodes, then refused the non-string keys).
        // It must fail at once, on the aliases.
        let mut text = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..=8 {
            let prev = format!("*l{}", i - 1);
            if i % 2 == 1 {
                text.push_str(&format!("l{i}: &l{i} {{ ? {prev} : 1 }}\n"));
            } else {
                text.push_str(&format!("l{i}: &l{i} [{}]\n", vec![prev; 9].join(", ")));
            }
        }
        let e = yaml_err(&text);
        assert!(e.contains("YAML aliases expand to more than"), "{e}");
    }

    #[test]
    fn yaml_alias_is_resolved() {
        assert_eq!(shape(&yaml("a: &x 5s\nb: *x\n")), r#"{a:"5s",b:"5s"}"#);
    }

    #[test]
    fn toml_values_and_positions_in_file_order() {
        let n = toml(
            "z = 1\n[s.b]\nq = \"é\"\nr = [1, 2.5, true]\n[s.a]\nx = { k = 0x10, j = 1_000 }\n",
        );
        assert_eq!(
            shape(&n),
            r#"{z:1,s:{b:{q:"é",r:[1,2.5,true]},a:{x:{k:16,j:1000}}}}"#
        );
        let s = n.get("s").unwrap();
        let b = s.get("b").unwrap();
        assert_eq!(b.get("r").unwrap().pos, Pos::new(4, 5));
        let a = &s.as_map().unwrap()[1];
        assert_eq!(a.0.pos, Pos::new(5, 4));
        let x = a.1.get("x").unwrap();
        assert_eq!(x.pos, Pos::new(6, 5));
        assert_eq!(x.as_map().unwrap()[1].0.pos, Pos::new(6, 17));
    }

    #[test]
    fn toml_columns_count_characters() {
        let n = toml("\"é😀\" = \"v\"\n");
        let (k, v) = &n.as_map().unwrap()[0];
        assert_eq!(k.name, "é😀");
        assert_eq!(v.pos, Pos::new(1, 8));
    }

    #[test]
    fn toml_errors() {
        assert_eq!(
            toml_err("a = 1\nb = 2\na = 3\n"),
            "<embedded default>:3:1: invalid TOML: duplicate key"
        );
        assert!(toml_err("a = \n").starts_with("<embedded default>:1:5: invalid TOML: "));
        assert_eq!(
            toml_err("a = 99999999999999999999\n"),
            "<embedded default>:1:5: integer 99999999999999999999 is out of range"
        );
    }

    #[test]
    fn describe() {
        let n = |v| Node::new(v, Pos::default());
        assert_eq!(n(Value::Str("yes".into())).describe(), "a string \"yes\"");
        assert_eq!(n(Value::Int(5)).describe(), "an integer 5");
        assert_eq!(n(Value::Bool(true)).describe(), "a boolean true");
        assert_eq!(n(Value::Float(1.5)).describe(), "a number 1.5");
        assert_eq!(n(Value::Null).describe(), "null");
        assert_eq!(n(Value::Seq(vec![])).describe(), "a list");
        assert_eq!(n(Value::Map(vec![])).describe(), "a map");
        assert_eq!(
            n(Value::Str("x".repeat(50))).describe(),
            format!("a string {:?}…", "x".repeat(40))
        );
    }
}
