//! Problems found while loading segments, each pointing at a file position.

use crate::yaml::Pos;
use std::fmt;
use std::path::PathBuf;

/// One problem in one file, displayed as `file:line:col: message` (1-based).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u32,
    pub col: u32,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: impl Into<PathBuf>, pos: Pos, message: impl Into<String>) -> Self {
        Self { file: file.into(), line: pos.line, col: pos.col, message: message.into() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.col, self.message)
    }
}

/// A map's entries with string keys (key, key node, value node); other keys were reported.
pub type Entries<'n> = Vec<(&'n str, &'n crate::yaml::Node, &'n crate::yaml::Node)>;

/// Collects the diagnostics of one YAML file while a parser reads its nodes:
/// the reading steps every renkei YAML parser shares (segments, campaigns,
/// rich menus).
pub struct NodeReader<'a> {
    pub file: &'a std::path::Path,
    pub diagnostics: &'a mut Vec<Diagnostic>,
    /// Problems reported so far (a parser compares it before and after a part).
    pub errors: usize,
}

impl<'a> NodeReader<'a> {
    pub fn new(file: &'a std::path::Path, diagnostics: &'a mut Vec<Diagnostic>) -> Self {
        Self { file, diagnostics, errors: 0 }
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors += 1;
        self.diagnostics.push(Diagnostic::new(self.file, pos, message));
    }

    pub fn wrong_type(&mut self, node: &crate::yaml::Node, expected: &str) {
        self.error(node.pos, format!("expected {expected}, got {}", node.kind.describe()));
    }

    /// The entries of a map node, reporting non-string and duplicate keys.
    pub fn entries<'n>(&mut self, node: &'n crate::yaml::Node, expected: &str) -> Option<Entries<'n>> {
        use crate::yaml::NodeKind;
        let NodeKind::Map(pairs) = &node.kind else {
            self.wrong_type(node, expected);
            return None;
        };
        let mut out: Entries<'n> = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let NodeKind::Str(name) = &key.kind else {
                self.error(key.pos, format!("expected a key name, got {}", key.kind.describe()));
                continue;
            };
            if out.iter().any(|(seen, _, _)| seen == name) {
                self.error(key.pos, format!("duplicate key `{name}`"));
                continue;
            }
            out.push((name.as_str(), key, value));
        }
        Some(out)
    }

    pub fn string(&mut self, node: &crate::yaml::Node) -> Option<String> {
        match &node.kind {
            crate::yaml::NodeKind::Str(text) => Some(text.clone()),
            _ => {
                self.wrong_type(node, "a string");
                None
            }
        }
    }
}
