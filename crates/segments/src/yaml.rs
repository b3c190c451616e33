//! A YAML document as a tree of nodes that each remember their 1-based
//! line and column, so that validation can point at the offending key or
//! value and report every problem instead of stopping at the first.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use serde_saphyr::options::DuplicateKeyPolicy;
use std::fmt;

/// A 1-based position in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in source order; duplicate keys are kept so they can be reported.
    Map(Vec<(Node, Node)>),
}

impl NodeKind {
    /// How the kind is named in error messages.
    pub fn describe(&self) -> &'static str {
        match self {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) | NodeKind::UInt(_) | NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a map",
        }
    }
}

impl Node {
    /// The text of a scalar used as a map key (`1:` and `true:` are keys too).
    pub fn key_text(&self) -> Option<String> {
        match &self.kind {
            NodeKind::Str(s) => Some(s.clone()),
            NodeKind::Int(i) => Some(i.to_string()),
            NodeKind::UInt(u) => Some(u.to_string()),
            NodeKind::Float(f) => Some(f.to_string()),
            NodeKind::Bool(b) => Some(b.to_string()),
            NodeKind::Null | NodeKind::Seq(_) | NodeKind::Map(_) => None,
        }
    }
}

/// A syntax error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Deepest nesting accepted. Real rules stay far below; the limit keeps
/// hostile files from exhausting the stack.
pub const MAX_DEPTH: usize = 48;

/// Serde recursion costs tens of KB of stack per level in debug builds, so
/// parsing runs on its own thread with a stack sized for [`MAX_DEPTH`].
const PARSER_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Parses one YAML document into a positioned tree.
pub fn parse_document(text: &str) -> Result<Node, SyntaxError> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("segment-yaml".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, || parse_on_this_thread(text));
        match worker {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(SyntaxError { pos: Pos::START, message: "invalid YAML: the parser failed on this input".into() })
            }),
            // No thread available: parse here, the depth budget still applies.
            Err(_) => parse_on_this_thread(text),
        }
    })
}

fn parse_on_this_thread(text: &str) -> Result<Node, SyntaxError> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_depth: MAX_DEPTH },
        // Keep repeated keys so validation reports them with the rest.
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        // YAML 1.2 booleans only: `no`, `n` or `off` stay strings (a rank may be "no").
        strict_booleans: true,
        // `0123` (a store or postal code) stays a string rather than becoming 123.
        leading_zero_numbers_as_strings: true,
    };
    match serde_saphyr::from_str_with_options::<Spanned<RawNode>>(text, options) {
        Ok(spanned) => Ok(Node { kind: spanned.value.0, pos: pos_of(&spanned.referenced) }),
        Err(error) => {
            let pos = error.location().map(|l| pos_of(&l)).unwrap_or(Pos::START);
            let render = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
            let rendered = error.render_with_options(render);
            let message = if rendered.contains("Depth {") {
                format!("invalid YAML: nested deeper than {MAX_DEPTH} levels")
            } else {
                format!("invalid YAML: {}", strip_position_suffix(&rendered))
            };
            Err(SyntaxError { pos, message })
        }
    }
}

fn pos_of(location: &serde_saphyr::Location) -> Pos {
    // Unknown locations are 0:0; clamp so every diagnostic stays 1-based.
    Pos { line: (location.line() as u32).max(1), col: (location.column() as u32).max(1) }
}

/// The renderer appends " at line N, column M"; the diagnostic already says where.
fn strip_position_suffix(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or("").trim();
    match first_line.rfind(" at line ") {
        Some(index) => first_line[..index].to_string(),
        None => first_line.to_string(),
    }
}

/// A node's kind, whose children carry their own spans.
struct RawNode(NodeKind);

fn child(spanned: Spanned<RawNode>) -> Node {
    Node { kind: spanned.value.0, pos: pos_of(&spanned.referenced) }
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;

        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = RawNode;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<RawNode, E> {
                Ok(RawNode(NodeKind::Null))
            }
            fn visit_none<E>(self) -> Result<RawNode, E> {
                Ok(RawNode(NodeKind::Null))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
                RawNode::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
                Ok(RawNode(NodeKind::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
                Ok(RawNode(NodeKind::Int(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
                Ok(RawNode(NodeKind::UInt(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
                Ok(RawNode(NodeKind::Float(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
                Ok(RawNode(NodeKind::Str(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
                Ok(RawNode(NodeKind::Str(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<RawNode, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = access.next_element::<Spanned<RawNode>>()? {
                    items.push(child(item));
                }
                Ok(RawNode(NodeKind::Seq(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RawNode, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = access.next_entry::<Spanned<RawNode>, Spanned<RawNode>>()? {
                    entries.push((child(key), child(value)));
                }
                Ok(RawNode(NodeKind::Map(entries)))
            }
        }

        deserializer.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u32, col: u32) -> Pos {
        Pos { line, col }
    }

    #[test]
    fn nodes_carry_positions_and_yaml_1_2_scalars() {
        let node = parse_document("a: n\nb:\n  - 0123\n  - 1.5\n  - ~\n").expect("valid");
        let NodeKind::Map(entries) = node.kind else { panic!("map") };
        assert_eq!(entries[0].0.pos, at(1, 1));
        assert_eq!(entries[0].1.kind, NodeKind::Str("n".into()));
        assert_eq!(entries[0].1.pos, at(1, 4));
        let NodeKind::Seq(items) = &entries[1].1.kind else { panic!("seq") };
        assert_eq!(items[0].kind, NodeKind::Str("0123".into()));
        assert_eq!(items[0].pos, at(3, 5));
        assert_eq!(items[1].kind, NodeKind::Float(1.5));
        assert_eq!(items[2].kind, NodeKind::Null);
    }

    #[test]
    fn duplicate_keys_are_kept_for_validation() {
        let node = parse_document("a: 1\na: 2\n").expect("valid");
        let NodeKind::Map(entries) = node.kind else { panic!("map") };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0.pos, at(2, 1));
    }

    #[test]
    fn syntax_errors_have_a_position_and_a_plain_message() {
        let error = parse_document("a: [1, 2\n").expect_err("unclosed");
        assert_eq!(error.pos, at(1, 4));
        assert!(!error.message.contains("at line"), "{}", error.message);
        let error = parse_document("a: 1\n---\nb: 2\n").expect_err("two documents");
        assert!(error.message.contains("multiple"), "{}", error.message);
    }
}
