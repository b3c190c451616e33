//! Rich-menu rules (`config/rich_menus.yaml`): a user gets the first
//! matching rule's menu, else the default. The default is the channel's
//! default rich menu at LINE, so a user no rule matches has no menu of their
//! own ([`RichMenuRules::per_user_menu`]) and sees it.
//!
//! ```yaml
//! rules:
//!   - segment: gold_members
//!     rich_menu: richmenu-0123456789abcdef0123456789abcdef
//! default: richmenu-fedcba9876543210fedcba9876543210
//! ```

use crate::parse::{Parser, has};
use renkei_segments::diagnostic::NodeReader;
use renkei_segments::yaml::{Node, NodeKind, Pos, parse_document};
use renkei_segments::{Diagnostic, SegmentSet};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RichMenuRules {
    /// In file order: the first rule whose segment holds the user wins.
    pub rules: Vec<RichMenuRule>,
    /// For users no rule matches.
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RichMenuRule {
    pub segment: String,
    pub rich_menu: String,
}

/// Whether `id` is a rich menu id: `richmenu-` and 32 lowercase hex digits.
pub fn is_rich_menu_id(id: &str) -> bool {
    id.strip_prefix("richmenu-")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

impl RichMenuRules {
    /// Reads the rules file; a missing file means no rules and no default.
    pub fn load(path: &Path, segments: &SegmentSet) -> Result<RichMenuRules, Vec<Diagnostic>> {
        match std::fs::read(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(RichMenuRules::default()),
            Err(error) => Err(vec![Diagnostic::new(path, Pos::START, format!("cannot read: {error}"))]),
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Self::from_source(path.to_path_buf(), &text, segments),
                Err(_) => Err(vec![Diagnostic::new(path, Pos::START, "not valid UTF-8")]),
            },
        }
    }

    /// The rules in `text` (read from `path`); an empty document has none.
    pub fn from_source(path: PathBuf, text: &str, segments: &SegmentSet) -> Result<RichMenuRules, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let mut parser = Parser { r: NodeReader::new(&path, &mut diagnostics), segments };
        let rules = match parse_document(text) {
            Ok(Node { kind: NodeKind::Null, .. }) => Some(RichMenuRules::default()),
            Ok(root) => parser.rich_menus(&root),
            Err(error) => {
                parser.r.error(error.pos, error.message);
                None
            }
        };
        match rules {
            Some(rules) if diagnostics.is_empty() => Ok(rules),
            _ => {
                diagnostics.sort();
                diagnostics.dedup();
                Err(diagnostics)
            }
        }
    }

    /// The first matching rule's menu, else the default.
    pub fn menu_for(&self, memberships: &BTreeSet<String>) -> Option<&str> {
        self.per_user_menu(memberships).or(self.default.as_deref())
    }

    /// The menu to link to the user personally: the first matching rule's;
    /// `None` (unlinked) when no rule matches, so the channel's default shows.
    pub fn per_user_menu(&self, memberships: &BTreeSet<String>) -> Option<&str> {
        self.rules.iter().find(|rule| memberships.contains(&rule.segment)).map(|rule| rule.rich_menu.as_str())
    }

    /// Every segment a rule names (membership changes there can move menus).
    pub fn segments(&self) -> BTreeSet<&str> {
        self.rules.iter().map(|rule| rule.segment.as_str()).collect()
    }
}

impl Parser<'_> {
    fn rich_menus(&mut self, root: &Node) -> Option<RichMenuRules> {
        let entries = self.r.entries(root, "a map with rules and default")?;
        self.unknown_keys(&entries, &["rules", "default"], "the rich menu file");
        let mut out = RichMenuRules::default();
        for &(key, _, value) in &entries {
            match key {
                "rules" => match &value.kind {
                    NodeKind::Seq(items) => {
                        for item in items {
                            if let Some(rule) = self.rich_menu_rule(item) {
                                out.rules.push(rule);
                            }
                        }
                    }
                    NodeKind::Null => {}
                    _ => self.r.wrong_type(value, "a list of {segment, rich_menu}"),
                },
                "default" => match &value.kind {
                    NodeKind::Null => {}
                    _ => out.default = self.rich_menu_id(value),
                },
                _ => {}
            }
        }
        Some(out)
    }

    fn rich_menu_rule(&mut self, node: &Node) -> Option<RichMenuRule> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a rule {segment: ID, rich_menu: ID}")?;
        self.unknown_keys(&entries, &["segment", "rich_menu"], "a rich menu rule");
        self.require(&entries, node, &["segment", "rich_menu"], "a rich menu rule");
        let (mut segment, mut rich_menu) = (None, None);
        for &(key, _, value) in &entries {
            match key {
                "segment" => segment = self.segment_ref(value),
                "rich_menu" => rich_menu = self.rich_menu_id(value),
                _ => {}
            }
        }
        if self.r.errors != errors_before || !has(&entries, "segment") {
            return None;
        }
        Some(RichMenuRule { segment: segment?, rich_menu: rich_menu? })
    }

    fn rich_menu_id(&mut self, node: &Node) -> Option<String> {
        let id = self.r.string(node)?;
        if is_rich_menu_id(&id) {
            Some(id)
        } else {
            self.r.error(
                node.pos,
                format!(
                    "invalid rich menu id {:?}: expected `richmenu-` and 32 lowercase hex digits",
                    renkei_segments::diagnostic::shorten(&id)
                ),
            );
            None
        }
    }
}
