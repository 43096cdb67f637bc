//! A YAML loader that keeps a span on every node.
//!
//! Errors found after parsing (an unknown model alias, a limit that is too small) must still point
//! at `file:line:col`, so the spec is decoded from this tree rather than through serde. Duplicate
//! keys are kept, not merged, so that they can be reported with both locations.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where a node stands in the source: 1-based line and column, and the byte range for snippets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Byte offset of the first character.
    pub offset: usize,
    /// Length in bytes (at least 1 where the source has a character there).
    pub len: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
}

/// A YAML node with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node holds.
    pub kind: Kind,
    /// Where it is.
    pub span: Span,
}

/// The three kinds of YAML node, plus null.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `~`, `null` or an empty value.
    Null,
    /// Any other scalar, as written (YAML 1.2 core schema types are applied by the decoder).
    Scalar {
        /// The scalar's text.
        value: String,
        /// Whether it was quoted (a quoted `"1"` is a string, never a number).
        quoted: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order, duplicates kept.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A short name of the node's kind for error messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Null => "null",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A syntax error, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// What the parser said.
    pub message: String,
    /// Where.
    pub span: Span,
}

/// Maps yaml-rust2 markers (char index, 1-based line, 0-based column) to byte spans.
struct Locator<'a> {
    source: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    fn new(source: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Locator {
            source,
            line_starts,
        }
    }

    fn span(&self, marker: &Marker, len_hint: usize) -> Span {
        let line = marker.line().max(1);
        let col0 = marker.col();
        let line_start = self
            .line_starts
            .get(line - 1)
            .copied()
            .unwrap_or(self.source.len());
        let line_end = self
            .line_starts
            .get(line)
            .map_or(self.source.len(), |e| e.saturating_sub(1));
        let text = &self.source[line_start..line_end.max(line_start)];
        let offset = line_start + text.char_indices().nth(col0).map_or(text.len(), |(i, _)| i);
        let rest = line_end.saturating_sub(offset);
        Span {
            offset,
            len: len_hint.clamp(1, rest.max(1)),
            line,
            col: col0 + 1,
        }
    }
}

/// Parses the first document of `source` into a spanned tree.
pub fn load(source: &str) -> Result<Node, SyntaxError> {
    let locator = Locator::new(source);
    let mut parser = Parser::new_from_str(source);
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    // Open collections: the node being built and its anchor id.
    let mut stack: Vec<(Node, usize, Option<Node>)> = Vec::new();
    let mut root: Option<Node> = None;
    let syntax = |message: String, marker: &Marker| SyntaxError {
        message,
        span: locator.span(marker, 1),
    };

    loop {
        let (event, marker) = parser
            .next_token()
            .map_err(|e| syntax(e.info().to_string(), e.marker()))?;
        let finished = match event {
            Event::StreamEnd => break,
            Event::DocumentEnd if root.is_some() => break,
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {
                continue;
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let len = value.len()
                    + if matches!(
                        style,
                        TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted
                    ) {
                        2
                    } else {
                        0
                    };
                let kind =
                    if !quoted && matches!(value.as_str(), "~" | "null" | "Null" | "NULL" | "") {
                        Kind::Null
                    } else {
                        Kind::Scalar { value, quoted }
                    };
                let node = Node {
                    kind,
                    span: locator.span(&marker, len),
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => node.clone(),
                None => return Err(syntax("alias of an unknown anchor".into(), &marker)),
            },
            Event::SequenceStart(anchor, _) => {
                stack.push((
                    Node {
                        kind: Kind::Seq(Vec::new()),
                        span: locator.span(&marker, 1),
                    },
                    anchor,
                    None,
                ));
                continue;
            }
            Event::MappingStart(anchor, _) => {
                stack.push((
                    Node {
                        kind: Kind::Map(Vec::new()),
                        span: locator.span(&marker, 1),
                    },
                    anchor,
                    None,
                ));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (mut node, anchor, _) = stack.pop().expect("the parser balances collections");
                // A block mapping's start marker points past its first key; its first key is where
                // a reader sees the mapping begin.
                if let Kind::Map(entries) = &node.kind
                    && let Some((k, _)) = entries.first()
                    && k.span.offset < node.span.offset
                {
                    node.span = Span { len: 1, ..k.span };
                }
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
        };
        match stack.last_mut() {
            None => root = Some(finished),
            Some((parent, _, pending_key)) => match &mut parent.kind {
                Kind::Seq(items) => items.push(finished),
                Kind::Map(entries) => match pending_key.take() {
                    None => *pending_key = Some(finished),
                    Some(key) => entries.push((key, finished)),
                },
                _ => unreachable!("only collections are pushed"),
            },
        }
    }
    Ok(root.unwrap_or(Node {
        kind: Kind::Null,
        span: Span {
            offset: 0,
            len: 0,
            line: 1,
            col: 1,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_one_based_with_byte_offsets() {
        let src = "a: 1\nbb:\n  - { x: \"日本\", y: 2 }\n";
        let root = load(src).unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert_eq!(
            entries[1].0.span,
            Span {
                offset: 5,
                len: 2,
                line: 2,
                col: 1
            }
        );
        let Kind::Seq(items) = &entries[1].1.kind else {
            panic!("not a seq")
        };
        let Kind::Map(inner) = &items[0].kind else {
            panic!("not a map")
        };
        let y = &inner[1].0;
        assert_eq!((y.span.line, y.span.col), (3, 16));
        assert_eq!(&src[y.span.offset..y.span.offset + y.span.len], "y");
        let x_value = &inner[0].1;
        assert_eq!(
            &src[x_value.span.offset..x_value.span.offset + x_value.span.len],
            "\"日本\""
        );
    }

    #[test]
    fn keeps_duplicate_keys_and_resolves_aliases() {
        let root = load("a: &v [1]\na: *v\n").unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1.kind, entries[1].1.kind);
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let err = load("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!((err.span.line, err.span.col), (2, 2));
        assert!(load("a: *nope\n").is_err());
    }

    #[test]
    fn empty_values_are_null() {
        let root = load("a:\nb: ~\n").unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert!(entries.iter().all(|(_, v)| v.kind == Kind::Null));
    }
}
