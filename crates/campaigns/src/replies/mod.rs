//! Reply rules: what renkei answers when a user writes to the account.
//!
//! One rule per file in `paths.replies` (default `config/replies/`), tried
//! in file-name order. A rule matches a text message (`equals`, `prefix` or
//! `contains`, after [`normalize`]: NFKC, lower case, trimmed, so
//! `ｐｏｉｎｔ`, `POINT` and `point` match alike, as do `ポイント` and `ﾎﾟｲﾝﾄ`)
//! or a postback's `action`. Its optional conditions (`when: { linked,
//! segment }`) are facts about the user; a rule whose conditions fail is
//! passed over for the next one, except an unlinked user on a rule that
//! needs a link: they get the rule's `unlinked_reply`, else the configured
//! link prompt. The first rule that applies replies; none leaves the message
//! to others (a relay target).
//!
//! Replies render like campaign messages: Flex templates
//! (`templates/<name>.json.hbs`, values JSON-escaped) with an `alt_text`, or
//! `text` with Handlebars (not escaped: it is sent as a JSON string). The
//! context is the campaigns' (`member`, `line_user_id`, `event`, `now`)
//! plus `rule` (`id`) and `member_code_url`: the signed, expiring URL of the
//! member's scannable code (a PNG renkei serves), when the user is linked.

mod parse;

use crate::set::{
    check_flex_template, read_templates, read_yaml_dir, render_message, sample_time, syntax_diagnostic, within_limits,
};
use crate::template::{
    RenderContext, RenderError, context_json, forbidden_constructs, line_col, mentions_track, registry,
};
use handlebars::{Context, Handlebars};
use parse::{ParsedRule, ReplyPositions, parse_rule_file};
use renkei_segments::diagnostic::DeclaredIds;
use renkei_segments::yaml::Pos;
use renkei_segments::{Diagnostic, SegmentSet};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use unicode_normalization::UnicodeNormalization as _;

/// The context key of the member-code image URL.
pub const MEMBER_CODE_URL: &str = "member_code_url";
/// The postback data of the link prompt's button: starts ID連携.
pub const LINK_ACTION_DATA: &str = "action=link";

/// How a text rule compares the (normalized) message with its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextMatch {
    Equals,
    Prefix,
    Contains,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyMatch {
    /// `pattern` is normalized at load.
    Text {
        mode: TextMatch,
        pattern: String,
    },
    Postback {
        action: String,
    },
}

/// `when:`: facts about the user a rule needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyConditions {
    /// `true`: linked users only (unlinked ones get `unlinked_reply` or the
    /// link prompt); `false`: unlinked users only.
    pub linked: Option<bool>,
    /// The user must be in this segment now.
    pub segment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyMessage {
    Flex { template: String, alt_text: String },
    Text { text: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRule {
    pub id: String,
    pub file: PathBuf,
    pub matches: ReplyMatch,
    pub when: ReplyConditions,
    pub reply: Vec<ReplyMessage>,
    pub unlinked_reply: Option<Vec<ReplyMessage>>,
}

/// What a user sent.
#[derive(Debug, Clone, Copy)]
pub enum Incoming<'a> {
    Text(&'a str),
    /// A postback's `data`.
    Postback(&'a str),
}

/// What is known about the user when a rule's conditions are checked.
#[derive(Debug, Clone, Copy)]
pub struct UserFacts<'a> {
    pub linked: bool,
    pub segments: &'a BTreeSet<String>,
}

/// Which of a rule's answers the user gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Reply,
    UnlinkedReply,
    LinkPrompt,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Reply => "reply",
            Answer::UnlinkedReply => "unlinked_reply",
            Answer::LinkPrompt => "link_prompt",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    pub rule: &'a ReplyRule,
    pub answer: Answer,
}

/// The form text is compared in: NFKC (full-width Latin and half-width
/// katakana become their usual forms), lower case, without surrounding
/// white space.
pub fn normalize(text: &str) -> String {
    text.nfkc().collect::<String>().to_lowercase().trim().to_string()
}

/// The `action` of postback data such as `action=points&x=1`.
pub fn postback_action(data: &str) -> Option<&str> {
    data.split('&').filter_map(|pair| pair.split_once('=')).find(|(key, _)| *key == "action").map(|(_, value)| value)
}

impl ReplyRule {
    fn matches(&self, input: &Incoming<'_>, normalized: Option<&str>) -> bool {
        match (&self.matches, input) {
            (ReplyMatch::Text { mode, pattern }, Incoming::Text(_)) => {
                let text = normalized.unwrap_or_default();
                match mode {
                    TextMatch::Equals => text == pattern,
                    TextMatch::Prefix => text.starts_with(pattern.as_str()),
                    TextMatch::Contains => text.contains(pattern.as_str()),
                }
            }
            (ReplyMatch::Postback { action }, Incoming::Postback(data)) => postback_action(data) == Some(action),
            _ => false,
        }
    }

    /// Which answer this rule gives the user, or `None` to pass to the next rule.
    fn answer(&self, facts: &UserFacts<'_>) -> Option<Answer> {
        if self.when.segment.as_ref().is_some_and(|segment| !facts.segments.contains(segment)) {
            return None;
        }
        match (self.when.linked, facts.linked) {
            (Some(false), true) => None,
            (_, false) if self.unlinked_reply.is_some() => Some(Answer::UnlinkedReply),
            (Some(true), false) => Some(Answer::LinkPrompt),
            _ => Some(Answer::Reply),
        }
    }
}

/// The link prompt: what an unlinked user gets from a rule that needs a
/// link and has no `unlinked_reply` of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPrompt {
    pub text: String,
    /// The label of its quick-reply button (postback `action=link`).
    pub button: String,
}

impl Default for LinkPrompt {
    fn default() -> Self {
        Self {
            text: "会員IDとLINEを連携すると、ご利用いただけます。下のボタンから連携してください。".into(),
            button: "ID連携する".into(),
        }
    }
}

impl LinkPrompt {
    fn message(&self) -> Value {
        json!({
            "type": "text",
            "text": self.text,
            "quickReply": {"items": [{
                "type": "action",
                "action": {"type": "postback", "label": self.button, "data": LINK_ACTION_DATA, "displayText": self.button},
            }]},
        })
    }
}

/// Every reply rule of the replies directory, valid as a whole, with their
/// compiled templates.
#[derive(Clone)]
pub struct ReplySet {
    /// In file-name order.
    rules: Vec<ReplyRule>,
    /// Flex templates by name, `{{values}}` JSON-escaped.
    flex: Handlebars<'static>,
    /// `text` and `alt_text` templates, named by [`text_name`], not escaped.
    text: Handlebars<'static>,
    link_prompt: LinkPrompt,
    /// Whether some template or text reads `member_code_url`.
    uses_member_code: bool,
}

impl fmt::Debug for ReplySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplySet").field("rules", &self.rules).finish_non_exhaustive()
    }
}

impl Default for ReplySet {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            flex: registry(true, None),
            text: registry(false, None),
            link_prompt: LinkPrompt::default(),
            uses_member_code: false,
        }
    }
}

/// The name of the text (or alt_text) template of message `index` of a
/// rule's answer.
fn text_name(rule: &str, answer: Answer, index: usize) -> String {
    format!("{rule}#{}#{index}", answer.as_str())
}

/// The sample user of the load-time check.
fn sample_context(rule: &ReplyRule) -> Context {
    let mut member = Map::new();
    member.insert("name".into(), json!("山田 太郎"));
    member.insert("rank".into(), json!("gold"));
    member.insert("points".into(), json!(1234));
    let properties = match &rule.matches {
        ReplyMatch::Text { pattern, .. } => json!({"message_type": "text", "text": pattern}),
        ReplyMatch::Postback { action } => json!({"data": format!("action={action}")}),
    };
    let event = json!({"type": "line_message", "occurred_at": "2026-08-01T16:00:00+09:00", "properties": properties});
    let ctx = RenderContext {
        member_id: Some("M00001"),
        member: Some(&member),
        line_user_id: Some("U00000000000000000000000000000000"),
        trigger_key: None,
        event: Some(&event),
        now: sample_time(),
        timezone: chrono_tz::Asia::Tokyo,
        public_base_url: "https://renkei.example",
    };
    let mut extras = Map::new();
    extras.insert(MEMBER_CODE_URL.into(), json!("https://renkei.example/member-code/sample"));
    Context::from(reply_context(rule, &ctx, &extras, true))
}

fn reply_context(rule: &ReplyRule, ctx: &RenderContext<'_>, extras: &Map<String, Value>, sample: bool) -> Value {
    let mut context = context_json(&rule.id, "", ctx, sample);
    if let Value::Object(fields) = &mut context {
        fields.remove("campaign");
        fields.insert("rule".into(), json!({"id": rule.id}));
        fields.extend(extras.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    context
}

impl ReplySet {
    /// Loads every `*.yaml` / `*.yml` file of `replies_dir` (a missing
    /// directory is no rules) and the Flex templates they name from
    /// `templates_dir`. Every problem is returned, sorted; any means nothing loads.
    pub fn load(replies_dir: &Path, templates_dir: &Path, segments: &SegmentSet) -> Result<ReplySet, Vec<Diagnostic>> {
        let (sources, mut diagnostics) = read_yaml_dir(replies_dir)?;
        let mut rules = Vec::new();
        let mut declared = DeclaredIds::default();
        for (path, text) in &sources {
            let ParsedRule { id, rule } = parse_rule_file(path, text, segments, &mut diagnostics);
            let Some((id, pos)) = id else { continue };
            if declared.declare("reply rule", id, path, pos, &mut diagnostics) {
                rules.extend(rule);
            }
        }
        let names: BTreeSet<String> = rules
            .iter()
            .flat_map(|(rule, _)| answers(rule))
            .filter_map(|(_, _, message)| match message {
                ReplyMessage::Flex { template, .. } => Some(template.clone()),
                ReplyMessage::Text { .. } => None,
            })
            .collect();
        let templates = read_templates(templates_dir, names, &mut diagnostics);
        let mut set = ReplySet::default();
        set.compile(&rules, templates, templates_dir, &mut diagnostics);
        if !diagnostics.is_empty() {
            diagnostics.sort();
            diagnostics.dedup();
            return Err(diagnostics);
        }
        set.rules = rules.into_iter().map(|(rule, _)| rule).collect();
        Ok(set)
    }

    /// Compiles the templates and texts, checking each renders with sample data.
    fn compile(
        &mut self,
        rules: &[(ReplyRule, Vec<ReplyPositions>)],
        templates: Vec<(String, PathBuf, String)>,
        templates_dir: &Path,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let mut sources = BTreeMap::new();
        for (name, path, text) in templates {
            let before = diagnostics.len();
            for (offset, message) in forbidden_constructs(&text) {
                let (line, col) = line_col(&text, offset);
                diagnostics.push(Diagnostic::new(&path, Pos { line, col }, message));
            }
            if let Err(error) = self.flex.register_template_string(&name, &text) {
                diagnostics.push(syntax_diagnostic(&path, &text, &error));
            }
            if mentions_track(&text) {
                diagnostics.push(Diagnostic::new(
                    &path,
                    Pos::START,
                    "`track` is for campaigns; a reply links directly",
                ));
            }
            self.uses_member_code |= text.contains(MEMBER_CODE_URL);
            if diagnostics.len() == before {
                sources.insert(name, (path, text));
            }
        }
        let mut checked = BTreeSet::new();
        for (rule, positions) in rules {
            let sample = sample_context(rule);
            for ((answer, index, message), pos) in answers(rule).zip(positions) {
                let (text, at) = match message {
                    ReplyMessage::Text { text } => (text, pos.body),
                    ReplyMessage::Flex { template, alt_text } => {
                        match sources.get(template) {
                            Some((path, text)) if checked.insert(template.clone()) => {
                                diagnostics.extend(check_flex_template(&self.flex, template, path, text, &sample));
                            }
                            Some(_) => {}
                            None if !diagnostics.iter().any(|d| d.file.ends_with(format!("{template}.json.hbs"))) => {
                                let expected = templates_dir.join(format!("{template}{}", crate::TEMPLATE_EXTENSION));
                                diagnostics.push(Diagnostic::new(
                                    &rule.file,
                                    pos.body,
                                    format!("unknown template `{template}` (no file {})", expected.display()),
                                ));
                            }
                            None => {}
                        }
                        (alt_text, pos.alt_text)
                    }
                };
                self.compile_text(rule, answer, index, text, at, &sample, diagnostics);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn compile_text(
        &mut self,
        rule: &ReplyRule,
        answer: Answer,
        index: usize,
        text: &str,
        at: Pos,
        sample: &Context,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let name = text_name(&rule.id, answer, index);
        if mentions_track(text) {
            diagnostics.push(Diagnostic::new(&rule.file, at, "`track` is for campaigns; a reply links directly"));
            return;
        }
        self.uses_member_code |= text.contains(MEMBER_CODE_URL);
        if let Err(error) = self.text.register_template_string(&name, text) {
            diagnostics.push(Diagnostic::new(&rule.file, at, format!("invalid template: {}", error.reason())));
        } else if let Err(error) = self.text.render_with_context(&name, sample) {
            diagnostics.push(Diagnostic::new(&rule.file, at, format!("does not render: {}", render_message(&error))));
        }
    }

    /// The set with another link prompt.
    pub fn with_link_prompt(mut self, prompt: LinkPrompt) -> ReplySet {
        self.link_prompt = prompt;
        self
    }

    pub fn rules(&self) -> &[ReplyRule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some reply shows the member's code (`member_code_url`):
    /// then renkei needs `server.link_keys` to sign its URL.
    pub fn uses_member_code(&self) -> bool {
        self.uses_member_code
    }

    /// The rules whose `match` the input meets, in order: nothing about the
    /// user is needed yet (so a message no rule matches costs no lookup).
    pub fn candidates(&self, input: &Incoming<'_>) -> Vec<&ReplyRule> {
        let normalized = match input {
            Incoming::Text(text) => Some(normalize(text)),
            Incoming::Postback(_) => None,
        };
        self.rules.iter().filter(|rule| rule.matches(input, normalized.as_deref())).collect()
    }

    /// The first of `candidates` that applies to the user, with its answer.
    pub fn choose<'a>(candidates: &[&'a ReplyRule], facts: &UserFacts<'_>) -> Option<Choice<'a>> {
        candidates.iter().find_map(|rule| rule.answer(facts).map(|answer| Choice { rule, answer }))
    }

    /// The LINE message objects of a choice for one user; `extras` are added
    /// to the template context (e.g. [`MEMBER_CODE_URL`]).
    pub fn render(
        &self,
        choice: &Choice<'_>,
        ctx: &RenderContext<'_>,
        extras: &Map<String, Value>,
    ) -> Result<Vec<Value>, RenderError> {
        let rule = choice.rule;
        let list = match choice.answer {
            Answer::LinkPrompt => return Ok(vec![self.link_prompt.message()]),
            Answer::Reply => &rule.reply,
            Answer::UnlinkedReply => rule.unlinked_reply.as_ref().unwrap_or(&rule.reply),
        };
        let context = Context::from(reply_context(rule, ctx, extras, false));
        let mut messages = Vec::with_capacity(list.len());
        for (index, message) in list.iter().enumerate() {
            let name = text_name(&rule.id, choice.answer, index);
            let text = self.text.render_with_context(&name, &context).map_err(|error| RenderError::Template {
                template: format!("reply rule {} {}[{index}]", rule.id, choice.answer.as_str()),
                message: render_message(&error),
            })?;
            messages.push(match message {
                ReplyMessage::Text { .. } => json!({"type": "text", "text": text}),
                ReplyMessage::Flex { template, .. } => {
                    let rendered = self.flex.render_with_context(template, &context).map_err(|error| {
                        RenderError::Template { template: template.clone(), message: render_message(&error) }
                    })?;
                    let contents: Value = serde_json::from_str(&rendered).map_err(|error| {
                        RenderError::InvalidJson { template: template.clone(), message: error.to_string() }
                    })?;
                    json!({"type": "flex", "altText": text, "contents": contents})
                }
            });
        }
        within_limits(messages)
    }
}

/// A rule's messages as `(answer, index, message)`: `reply`, then
/// `unlinked_reply` (the order of the parser's positions).
fn answers(rule: &ReplyRule) -> impl Iterator<Item = (Answer, usize, &ReplyMessage)> {
    let reply = rule.reply.iter().enumerate().map(|(i, m)| (Answer::Reply, i, m));
    let unlinked = rule.unlinked_reply.iter().flatten().enumerate().map(|(i, m)| (Answer::UnlinkedReply, i, m));
    reply.chain(unlinked)
}

#[cfg(test)]
mod tests;
