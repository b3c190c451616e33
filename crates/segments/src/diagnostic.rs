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

/// The longest segment or campaign id.
pub const MAX_ID_LEN: usize = 64;

/// A segment or campaign id: `[a-z0-9_]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Keeps messages readable when the input is huge.
pub fn shorten(text: &str) -> String {
    const KEEP: usize = 40;
    if text.chars().count() <= KEEP {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(KEEP).collect::<String>())
    }
}

/// The ids the files of one directory declare, each with where it first
/// was: a second declaration is reported pointing at the first.
#[derive(Debug, Default)]
pub struct DeclaredIds {
    first: std::collections::BTreeMap<String, (PathBuf, Pos)>,
}

impl DeclaredIds {
    /// Records `id` (a `what`: "segment", "campaign") declared at `file:pos`;
    /// false, with a diagnostic, when it was declared before.
    pub fn declare(
        &mut self,
        what: &str,
        id: String,
        file: &std::path::Path,
        pos: Pos,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> bool {
        if let Some((first_file, first_pos)) = self.first.get(&id) {
            let message = format!(
                "duplicate {what} id `{id}` (already defined at {}:{}:{})",
                first_file.display(),
                first_pos.line,
                first_pos.col
            );
            diagnostics.push(Diagnostic::new(file, pos, message));
            return false;
        }
        self.first.insert(id, (file.to_path_buf(), pos));
        true
    }

    pub fn contains(&self, id: &str) -> bool {
        self.first.contains_key(id)
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
    /// The `id` of a `what` ("segment", "campaign"), with where it is.
    pub fn id(&mut self, what: &str, node: &crate::yaml::Node) -> Option<(String, Pos)> {
        let text = self.string(node)?;
        if is_valid_id(&text) {
            Some((text, node.pos))
        } else {
            self.error(node.pos, format!("invalid {what} id {:?}: must match [a-z0-9_]{{1,64}}", shorten(&text)));
            None
        }
    }

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
