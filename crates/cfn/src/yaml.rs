//! Block-style YAML for templates, written straight from JSON values.
//!
//! A 10,000-application rendering writes ~60 MB of YAML; libyaml's emitter (through serde_yaml_ng)
//! was most of the render time. Templates are JSON values only (maps with string keys, lists,
//! strings, numbers, booleans, null), so the emitter needs no more than block mappings and
//! sequences and three scalar styles, chosen conservatively:
//! - plain, when the text cannot be read back as anything but this string;
//! - single-quoted, for any other one-line text;
//! - double-quoted with JSON escapes (valid YAML escapes), for text with line breaks or control
//!   characters.
//!
//! Round trips through a YAML parser are tested on every example and on random values.

use std::fmt::Write;

use serde_json::{Map, Value};

/// `value` as a YAML document.
pub fn to_string(value: &Value) -> String {
    let mut out = String::with_capacity(4096);
    match value {
        Value::Object(map) if !map.is_empty() => mapping(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => sequence(&mut out, items, 0),
        other => {
            scalar_or_empty(&mut out, other);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

/// A mapping whose first key starts at the current position; later keys at `at` spaces.
fn mapping(out: &mut String, map: &Map<String, Value>, at: usize) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            indent(out, at);
        }
        entry_here(out, key, value, at);
    }
}

/// `key: value` with the key at `at` spaces (nested values below it).
pub fn entry(out: &mut String, key: &str, value: &Value, at: usize) {
    indent(out, at);
    entry_here(out, key, value, at);
}

/// `key:` followed by a block at `at + 2` spaces, for callers that write the block themselves.
pub fn key(out: &mut String, key: &str, at: usize) {
    indent(out, at);
    scalar_str(out, key);
    out.push_str(":\n");
}

/// `key: text` with the key at `at` spaces.
pub fn str_entry(out: &mut String, key: &str, text: &str, at: usize) {
    indent(out, at);
    scalar_str(out, key);
    out.push_str(": ");
    scalar_str(out, text);
    out.push('\n');
}

fn entry_here(out: &mut String, key: &str, value: &Value, at: usize) {
    scalar_str(out, key);
    out.push(':');
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            indent(out, at + 2);
            mapping(out, m, at + 2);
        }
        // Lists under a key sit at the key's own indentation, as libyaml writes them.
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            indent(out, at);
            sequence(out, items, at);
        }
        other => {
            out.push(' ');
            scalar_or_empty(out, other);
            out.push('\n');
        }
    }
}

/// A sequence whose first `- ` starts at the current position; later items at `at` spaces.
fn sequence(out: &mut String, items: &[Value], at: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            indent(out, at);
        }
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => mapping(out, m, at + 2),
            Value::Array(inner) if !inner.is_empty() => sequence(out, inner, at + 2),
            other => {
                scalar_or_empty(out, other);
                out.push('\n');
            }
        }
    }
}

fn scalar_or_empty(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => scalar_str(out, s),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

fn scalar_str(out: &mut String, s: &str) {
    if s.chars().any(|c| c.is_control()) {
        // JSON's escapes (\n, \t, \", \\, \uXXXX) are YAML double-quoted escapes too.
        out.push_str(&serde_json::to_string(s).expect("a string serializes"));
    } else if plain_is_safe(s) {
        out.push_str(s);
    } else {
        out.push('\'');
        for c in s.chars() {
            if c == '\'' {
                out.push('\'');
            }
            out.push(c);
        }
        out.push('\'');
    }
}

/// Words YAML 1.1 or 1.2 readers take for booleans or null.
const SPECIAL_WORDS: &[&str] = &[
    "null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False", "FALSE", "yes", "Yes",
    "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N",
];

/// Whether `s` reads back, unquoted, as exactly this string in a block context.
fn plain_is_safe(s: &str) -> bool {
    let bytes = s.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if first == b' ' || last == b' ' || last == b':' {
        return false;
    }
    // Indicators that start something else than a plain scalar.
    if b"-?:,[]{}#&*!|>'\"%@`".contains(&first) {
        return false;
    }
    // Numbers, dates, times and sexagesimals in either YAML version start like this: quote them
    // all rather than chase each resolver.
    if first.is_ascii_digit() || first == b'+' {
        return false;
    }
    // `.5`, `.inf`, `.NaN`; but `../lambda` is a path.
    if first == b'.' && bytes.get(1).is_some_and(u8::is_ascii_alphanumeric) {
        return false;
    }
    if SPECIAL_WORDS.contains(&s) {
        return false;
    }
    if s.contains(": ") || s.contains(" #") || s.contains('\t') {
        return false;
    }
    // Only printable ASCII plain; anything else is quoted (still UTF-8 in the file).
    bytes.iter().all(|b| (0x20..0x7f).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn round_trip(value: &Value) {
        let text = to_string(value);
        let back: Value = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("unreadable YAML ({e}):\n{text}"));
        assert_eq!(&back, value, "YAML:\n{text}");
    }

    #[test]
    fn layout_matches_block_style() {
        let v = json!({
            "AWSTemplateFormatVersion": "2010-09-09",
            "Resources": { "A": { "Type": "AWS::X", "Properties": { "List": ["a", "b"], "Maps": [{ "k": 1, "l": [true, null] }], "Empty": {}, "None": [] } } }
        });
        assert_eq!(
            to_string(&v),
            "AWSTemplateFormatVersion: '2010-09-09'\nResources:\n  A:\n    Properties:\n      Empty: {}\n      List:\n      - a\n      - b\n      Maps:\n      - k: 1\n        l:\n        - true\n        - null\n      None: []\n    Type: AWS::X\n"
        );
        round_trip(&v);
    }

    #[test]
    fn scalars_that_would_read_as_something_else_are_quoted() {
        for s in [
            "1024",
            "80",
            "1e3",
            "0x1F",
            ".inf",
            "-1",
            "+1",
            "2010-09-09",
            "12:30",
            "true",
            "no",
            "~",
            "null",
            "",
            " lead",
            "trail ",
            "a: b",
            "a #b",
            "#c",
            "*",
            "{modelId}",
            "[x]",
            "'q'",
            "\"q\"",
            "-",
            "-x",
            "? x",
            "x:",
            "it's",
            ".5",
            ".NaN",
            "..",
            "../a",
            "tab\there",
            "line\nbreak",
            "ünïcode",
            "%x",
            "@x",
            "`x`",
            "!x",
            "&x",
            "|x",
            ">x",
        ] {
            round_trip(&json!({ "k": s }));
            round_trip(&json!([s]));
        }
        for s in [
            "arn:${AWS::Partition}:iam::${AWS::AccountId}:root",
            "Fn::Sub",
            "kms:*",
            "a-b_c/d.e",
        ] {
            assert_eq!(
                to_string(&json!({ "k": s })),
                format!("k: {s}\n"),
                "plain: {s}"
            );
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1.0e9f64..1.0e9).prop_map(|f| json!(f)),
            "[ -~\n\t'\"#:ü\\\\{}\\[\\],&*!|>%@`-]{0,12}".prop_map(Value::String),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[ -~ü]{0,8}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_value_reads_back_the_same(v in value()) {
            let doc = json!({ "Root": v });
            let text = to_string(&doc);
            let back: Value = serde_yaml_ng::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(back, doc, "YAML:\n{}", text);
        }
    }
}
