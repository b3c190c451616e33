//! A validated set of campaigns with their compiled templates.

use crate::link::LinkKeys;
use crate::model::{Campaign, Trigger};
use crate::parse::{MessagePositions, ParsedFile, parse_file};
use crate::template::{
    Reads, RenderContext, RenderError, context_json, forbidden_constructs, line_col, mentions_track, registry,
    template_reads, track_helper, unclosed_block,
};
use chrono::{DateTime, Utc};
use handlebars::{Context, Handlebars};
use renkei_segments::diagnostic::DeclaredIds;
use renkei_segments::files::{Source, read_text};
use renkei_segments::yaml::Pos;
use renkei_segments::{Diagnostic, SegmentSet};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The extension of template files: `templates/<name>.json.hbs`.
pub const TEMPLATE_EXTENSION: &str = ".json.hbs";

/// Every campaign of the campaigns directory, valid as a whole.
#[derive(Clone)]
pub struct CampaignSet {
    campaigns: BTreeMap<String, Campaign>,
    /// Flex templates by name, `{{values}}` JSON-escaped.
    flex: Handlebars<'static>,
    /// Each message's alt_text, named `<campaign id>#<index>`, not escaped.
    alt: Handlebars<'static>,
    /// Template name → file.
    template_files: BTreeMap<String, PathBuf>,
    /// Campaigns whose templates or alt_text use `track`.
    tracking: BTreeSet<String>,
    /// Per campaign, what each message (its template and alt_text) reads of the recipient.
    reads: BTreeMap<String, Vec<Reads>>,
    /// What `track` seals with and `/t/` opens with.
    link_keys: Option<Arc<LinkKeys>>,
}

impl fmt::Debug for CampaignSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CampaignSet").field("campaigns", &self.campaigns).finish_non_exhaustive()
    }
}

impl Default for CampaignSet {
    fn default() -> Self {
        CampaignSet {
            campaigns: BTreeMap::new(),
            flex: registry(true, None),
            alt: registry(false, None),
            template_files: BTreeMap::new(),
            tracking: BTreeSet::new(),
            reads: BTreeMap::new(),
            link_keys: None,
        }
    }
}

/// The campaign and reply-rule folders are optional: a missing one has no files.
pub(crate) fn read_yaml_dir(dir: &Path) -> Result<(Vec<Source>, Vec<Diagnostic>), Vec<Diagnostic>> {
    renkei_segments::files::read_yaml_dir(dir, renkei_segments::files::MissingDir::Empty)
}

/// The templates `names` of `templates_dir` as `(name, file, text)`; a
/// missing one is left to be reported where it is named.
pub(crate) fn read_templates(
    templates_dir: &Path,
    names: BTreeSet<String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<(String, PathBuf, String)> {
    let mut templates = Vec::new();
    for name in names {
        let path = templates_dir.join(format!("{name}{TEMPLATE_EXTENSION}"));
        if !path.exists() {
            continue;
        }
        match read_text(&path) {
            Ok(text) => templates.push((name, path, text)),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    templates
}

fn alt_name(campaign_id: &str, index: usize) -> String {
    format!("{campaign_id}#{index}")
}

/// The fixed sample the load-time check renders every template with.
pub(crate) fn sample_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_785_567_600, 0).unwrap_or_default() // 2026-08-01T07:00:00Z
}

impl CampaignSet {
    /// Loads every `*.yaml` / `*.yml` file of `campaigns_dir` (not recursive;
    /// a missing directory is an empty set) and the templates they name
    /// (`templates_dir/<name>.json.hbs`). Returns every problem found, sorted,
    /// and nothing else if there is any.
    pub fn load(
        campaigns_dir: &Path,
        templates_dir: &Path,
        segments: &SegmentSet,
    ) -> Result<CampaignSet, Vec<Diagnostic>> {
        let (sources, mut diagnostics) = read_yaml_dir(campaigns_dir)?;
        // Read the templates the campaigns name (a cheap scan; validation happens in from_sources).
        let mut names = BTreeSet::new();
        for (_, text) in &sources {
            names.extend(template_names(text));
        }
        let templates = read_templates(templates_dir, names, &mut diagnostics);
        let result = Self::from_sources_in(sources, templates, segments, Some(templates_dir));
        match result {
            Ok(set) if diagnostics.is_empty() => Ok(set),
            Ok(_) => {
                diagnostics.sort();
                Err(diagnostics)
            }
            Err(more) => {
                diagnostics.extend(more);
                diagnostics.sort();
                diagnostics.dedup();
                Err(diagnostics)
            }
        }
    }

    /// Campaign files' texts and templates `(name, file, text)`, as if they
    /// were the two directories.
    pub fn from_sources(
        campaigns: Vec<(PathBuf, String)>,
        templates: Vec<(String, PathBuf, String)>,
        segments: &SegmentSet,
    ) -> Result<CampaignSet, Vec<Diagnostic>> {
        Self::from_sources_in(campaigns, templates, segments, None)
    }

    fn from_sources_in(
        campaigns: Vec<(PathBuf, String)>,
        templates: Vec<(String, PathBuf, String)>,
        segments: &SegmentSet,
        templates_dir: Option<&Path>,
    ) -> Result<CampaignSet, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let mut set = CampaignSet::default();
        let mut declared = DeclaredIds::default();
        let mut parsed: Vec<(Campaign, Vec<MessagePositions>)> = Vec::new();
        for (path, text) in campaigns {
            let ParsedFile { id, campaign } = parse_file(&path, &text, segments, &mut diagnostics);
            let Some((id, pos)) = id else { continue };
            if declared.declare("campaign", id, &path, pos, &mut diagnostics) {
                parsed.extend(campaign);
            }
        }

        // Compile every template given, then check the referenced ones render JSON.
        let mut template_sources: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
        let mut compiled: BTreeSet<String> = BTreeSet::new();
        for (name, path, text) in templates {
            let before = diagnostics.len();
            for (offset, message) in forbidden_constructs(&text) {
                let (line, col) = line_col(&text, offset);
                diagnostics.push(Diagnostic::new(&path, Pos { line, col }, message));
            }
            if let Err(error) = set.flex.register_template_string(&name, &text) {
                diagnostics.push(syntax_diagnostic(&path, &text, &error));
            } else if diagnostics.len() == before {
                compiled.insert(name.clone());
            }
            set.template_files.insert(name.clone(), path.clone());
            template_sources.insert(name, (path, text));
        }

        let mut checked: BTreeSet<String> = BTreeSet::new();
        for (campaign, positions) in &parsed {
            for (index, (message, pos)) in campaign.messages.iter().zip(positions).enumerate() {
                if let Err(error) = set.alt.register_template_string(&alt_name(&campaign.id, index), &message.alt_text)
                {
                    diagnostics.push(Diagnostic::new(
                        &campaign.file,
                        pos.alt_text,
                        format!("invalid alt_text template: {}", error.reason()),
                    ));
                }
                if !template_sources.contains_key(&message.template) {
                    let expected = match templates_dir {
                        Some(dir) => {
                            dir.join(format!("{}{TEMPLATE_EXTENSION}", message.template)).display().to_string()
                        }
                        None => format!("{}{TEMPLATE_EXTENSION}", message.template),
                    };
                    diagnostics.push(Diagnostic::new(
                        &campaign.file,
                        pos.template,
                        format!("unknown template `{}` (no file {expected})", message.template),
                    ));
                    continue;
                }
                if compiled.contains(&message.template) && checked.insert(message.template.clone()) {
                    if let Some((path, text)) = template_sources.get(&message.template) {
                        if let Some(diagnostic) = set.check_template(&message.template, path, text, campaign) {
                            diagnostics.push(diagnostic);
                        }
                    }
                }
            }
        }
        // alt_text that compiles must also render with sample data (bad helper use, bad date format…).
        for (campaign, positions) in &parsed {
            for (index, pos) in positions.iter().enumerate() {
                let name = alt_name(&campaign.id, index);
                if set.alt.has_template(&name) {
                    let context = Context::from(sample_context(campaign));
                    if let Err(error) = set.alt.render_with_context(&name, &context) {
                        diagnostics.push(Diagnostic::new(
                            &campaign.file,
                            pos.alt_text,
                            format!("alt_text does not render: {}", render_message(&error)),
                        ));
                    }
                }
            }
        }

        if !diagnostics.is_empty() {
            diagnostics.sort();
            diagnostics.dedup();
            return Err(diagnostics);
        }
        set.tracking = parsed
            .iter()
            .filter(|(c, _)| {
                c.messages.iter().any(|m| {
                    mentions_track(&m.alt_text)
                        || template_sources.get(&m.template).is_some_and(|(_, text)| mentions_track(text))
                })
            })
            .map(|(c, _)| c.id.clone())
            .collect();
        set.reads = parsed
            .iter()
            .map(|(c, _)| {
                let reads = c.messages.iter().map(|m| {
                    let template = template_sources.get(&m.template).map(|(_, text)| template_reads(text));
                    let everything = Reads { everything: true, ..Reads::default() };
                    template.unwrap_or(everything).union(template_reads(&m.alt_text))
                });
                (c.id.clone(), reads.collect())
            })
            .collect();
        set.campaigns = parsed.into_iter().map(|(c, _)| (c.id.clone(), c)).collect();
        Ok(set)
    }

    /// The set with `track` sealing links with `keys`.
    pub fn with_link_keys(mut self, keys: Arc<LinkKeys>) -> CampaignSet {
        self.flex.register_helper("track", track_helper(Some(keys.clone())));
        self.alt.register_helper("track", track_helper(Some(keys.clone())));
        self.link_keys = Some(keys);
        self
    }

    /// The keys given to [`CampaignSet::with_link_keys`].
    pub fn link_keys(&self) -> Option<&LinkKeys> {
        self.link_keys.as_deref()
    }

    /// The ids of campaigns whose templates or alt_text use `track`, sorted.
    pub fn tracking_campaigns(&self) -> impl Iterator<Item = &str> {
        self.tracking.iter().map(String::as_str)
    }

    /// Renders a template with sample data; a problem is reported at the template file.
    fn check_template(&self, name: &str, path: &Path, text: &str, campaign: &Campaign) -> Option<Diagnostic> {
        check_flex_template(&self.flex, name, path, text, &Context::from(sample_context(campaign)))
    }

    pub fn get(&self, id: &str) -> Option<&Campaign> {
        self.campaigns.get(id)
    }

    /// Every campaign, sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = &Campaign> {
        self.campaigns.values()
    }

    pub fn len(&self) -> usize {
        self.campaigns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.campaigns.is_empty()
    }

    /// Campaigns that fire on entering `segment`.
    pub fn entering(&self, segment: &str) -> impl Iterator<Item = &Campaign> + '_ {
        let segment = segment.to_string();
        self.iter().filter(move |c| matches!(&c.trigger, Trigger::SegmentEntered { segment: s } if *s == segment))
    }

    /// Campaigns triggered by events of `event_type`.
    pub fn on_event(&self, event_type: &str) -> impl Iterator<Item = &Campaign> + '_ {
        let event_type = event_type.to_string();
        self.iter().filter(move |c| matches!(&c.trigger, Trigger::Event { event_type: t, .. } if *t == event_type))
    }

    /// Fan-out campaigns triggered by events of `event_type`.
    pub fn fanning_out(&self, event_type: &str) -> impl Iterator<Item = &Campaign> + '_ {
        let event_type = event_type.to_string();
        self.iter().filter(move |c| matches!(&c.trigger, Trigger::Fanout { event_type: t, .. } if *t == event_type))
    }

    /// Event types whose arrival can cancel a pending send (`unless.event`).
    pub fn cancelling_event_types(&self) -> BTreeSet<String> {
        self.iter()
            .filter_map(|c| match &c.trigger {
                Trigger::Event { unless: Some(unless), .. } => Some(unless.event.clone()),
                _ => None,
            })
            .collect()
    }

    /// The file a template was read from.
    pub fn template_file(&self, name: &str) -> Option<&Path> {
        self.template_files.get(name).map(PathBuf::as_path)
    }

    /// Renders the campaign's messages as LINE message objects
    /// `{"type":"flex","altText":…,"contents":…}` and checks them against
    /// LINE's limits (altText ≤ 1,500 characters, bubble ≤ 30 KB, carousel ≤
    /// 12 bubbles and 50 KB).
    pub fn render(&self, campaign: &Campaign, ctx: &RenderContext<'_>) -> Result<Vec<Value>, RenderError> {
        self.render_step(campaign, None, ctx)
    }

    /// Whether a message of `campaign` (any step or variant) may read the
    /// member (`member.*`, `member_id`, or what the reading cannot follow):
    /// renders of one that does not need no member record.
    pub fn reads_member(&self, campaign_id: &str) -> bool {
        self.reads.get(campaign_id).is_none_or(|all| all.iter().any(|r| r.member || r.everything))
    }

    /// Whether every recipient of `campaign` gets the same messages at a
    /// given time: it has no steps and no variants, and no message reads the
    /// recipient (member data, LINE user, `track`, the event, or what the
    /// reading cannot follow). A fire of it renders once per page.
    pub fn renders_alike(&self, campaign: &Campaign) -> bool {
        campaign.steps.is_empty()
            && campaign.variants.is_empty()
            && self.reads.get(&campaign.id).is_some_and(|all| {
                all.iter().all(|r| !(r.member || r.line_user_id || r.track || r.event || r.everything))
            })
    }

    /// [`CampaignSet::render_step`], shared with the renders in `memo` whose
    /// recipients' context reads the same (the same variant, and the same
    /// member data, user, event and time as far as the templates read them):
    /// a template that reads nothing of the recipient renders once per memo.
    /// Keep a memo for a batch (a page of a fire): it holds each distinct render.
    pub fn render_step_shared(
        &self,
        campaign: &Campaign,
        step: Option<usize>,
        ctx: &RenderContext<'_>,
        memo: &mut RenderMemo,
    ) -> Result<Arc<Value>, RenderError> {
        let Some(key) = self.render_key(campaign, step, ctx) else {
            return self.render_step(campaign, step, ctx).map(|messages| Arc::new(Value::Array(messages)));
        };
        if let Some(rendered) = memo.rendered.get(&key) {
            return rendered.clone();
        }
        let rendered = self.render_step(campaign, step, ctx).map(|messages| Arc::new(Value::Array(messages)));
        memo.rendered.insert(key, rendered.clone());
        rendered
    }

    /// What a render of `campaign` for `ctx` depends on, as a key (`None`:
    /// its templates read what cannot be told apart, render each on its own).
    fn render_key(&self, campaign: &Campaign, step: Option<usize>, ctx: &RenderContext<'_>) -> Option<String> {
        let step = step.or((!campaign.steps.is_empty()).then_some(0));
        let (_, range) = campaign.message_range(step, ctx.line_user_id);
        let per_message = self.reads.get(&campaign.id)?;
        let reads = range
            .clone()
            .map(|i| per_message.get(i).copied())
            .try_fold(Reads::default(), |all, one| one.filter(|r| !r.everything).map(|r| all.union(r)))?;
        let mut key = serde_json::to_string(&(&campaign.id, step, range.start)).ok()?;
        if reads.member {
            key += &serde_json::to_string(&(ctx.member_id, ctx.member)).ok()?;
        }
        if reads.line_user_id || reads.track {
            key += &serde_json::to_string(&ctx.line_user_id).ok()?;
        }
        if reads.track {
            key += &serde_json::to_string(&ctx.trigger_key).ok()?;
        }
        if reads.event {
            key += &serde_json::to_string(&ctx.event).ok()?;
        }
        if reads.now {
            key += &ctx.now.with_timezone(&ctx.timezone).to_rfc3339();
        }
        Some(key)
    }

    /// [`CampaignSet::render`] for one step of a sequence (`None`: a
    /// campaign without steps, or its first step).
    pub fn render_step(
        &self,
        campaign: &Campaign,
        step: Option<usize>,
        ctx: &RenderContext<'_>,
    ) -> Result<Vec<Value>, RenderError> {
        let context = Context::from(context_json(&campaign.id, &campaign.name, ctx, false));
        // The step's (or campaign's) messages, or the recipient's variant's:
        // their alt_text templates are named by their place in `campaign.messages`.
        let step = step.or((!campaign.steps.is_empty()).then_some(0));
        let (_, range) = campaign.message_range(step, ctx.line_user_id);
        let mut messages = Vec::with_capacity(range.len());
        for (index, message) in range.clone().zip(&campaign.messages[range]) {
            let rendered = self.flex.render_with_context(&message.template, &context).map_err(|error| {
                RenderError::Template { template: message.template.clone(), message: render_message(&error) }
            })?;
            let contents: Value = serde_json::from_str(&rendered).map_err(|error| RenderError::InvalidJson {
                template: message.template.clone(),
                message: error.to_string(),
            })?;
            let alt_template = alt_name(&campaign.id, index);
            let alt_text =
                self.alt.render_with_context(&alt_template, &context).map_err(|error| RenderError::Template {
                    template: format!("{} messages[{index}].alt_text", campaign.id),
                    message: render_message(&error),
                })?;
            messages.push(json!({"type": "flex", "altText": alt_text, "contents": contents}));
        }
        within_limits(messages)
    }
}

/// Renders kept for [`CampaignSet::render_step_shared`], by what they depend on.
#[derive(Debug, Default)]
pub struct RenderMemo {
    /// Each a JSON array, shared by every delivery rendered alike.
    rendered: std::collections::HashMap<String, Result<Arc<Value>, RenderError>>,
}

/// `messages` checked against LINE's limits (altText ≤ 1,500 characters,
/// bubble ≤ 30 KB, carousel ≤ 12 bubbles and 50 KB, 1 to 5 messages).
pub(crate) fn within_limits(messages: Vec<Value>) -> Result<Vec<Value>, RenderError> {
    let array = Value::Array(messages);
    let details = renkei_line::limits::validate_messages(Some(&array));
    if !details.is_empty() {
        let text = details
            .iter()
            .map(|d| {
                format!(
                    "{}: {}",
                    d.property.as_deref().unwrap_or("messages"),
                    d.message.as_deref().unwrap_or("invalid")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(RenderError::Limits(text));
    }
    match array {
        Value::Array(messages) => Ok(messages),
        _ => Ok(Vec::new()),
    }
}

/// Renders Flex template `name` (from `path`, text `text`) with sample
/// `context`: a problem (a render error, invalid JSON, not a bubble or
/// carousel within LINE's limits) is reported at the template file.
pub(crate) fn check_flex_template(
    flex: &Handlebars<'static>,
    name: &str,
    path: &Path,
    text: &str,
    context: &Context,
) -> Option<Diagnostic> {
    let rendered = match flex.render_with_context(name, context) {
        Ok(rendered) => rendered,
        Err(error) => {
            let pos = match (error.line_no, error.column_no) {
                (Some(line), Some(col)) => Pos { line: to_u32(line), col: to_u32(col) },
                _ => Pos::START,
            };
            return Some(Diagnostic::new(path, pos, format!("template does not render: {}", render_message(&error))));
        }
    };
    let contents: Value = match serde_json::from_str(&rendered) {
        Ok(contents) => contents,
        Err(error) => {
            // Sample values hold no newlines, so output lines are template lines
            // unless a block repeats or drops some.
            let same_shape = rendered.lines().count() == text.lines().count();
            let pos = if same_shape { Pos { line: to_u32(error.line()), col: 1 } } else { Pos::START };
            return Some(Diagnostic::new(
                path,
                pos,
                format!("template does not render valid JSON with sample data: {error} (of the rendered output)"),
            ));
        }
    };
    let message = json!([{"type": "flex", "altText": "sample", "contents": contents}]);
    let details = renkei_line::limits::validate_messages(Some(&message));
    if details.is_empty() {
        return None;
    }
    let text = details
        .iter()
        .map(|d| {
            format!(
                "{}: {}",
                d.property.as_deref().unwrap_or("contents").replacen("messages[0].", "", 1),
                d.message.as_deref().unwrap_or("invalid")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Some(Diagnostic::new(path, Pos::START, format!("not a valid Flex message `contents` (bubble or carousel): {text}")))
}

/// The sample recipient of the load-time check.
fn sample_context(campaign: &Campaign) -> Value {
    let mut member = Map::new();
    member.insert("name".into(), json!("山田 太郎"));
    let event_type = campaign.trigger.event_type().unwrap_or("sample");
    let event = json!({"type": event_type, "occurred_at": "2026-08-01T16:00:00+09:00", "properties": {}});
    let ctx = RenderContext {
        member_id: Some("M00001"),
        member: Some(&member),
        line_user_id: Some("U00000000000000000000000000000000"),
        trigger_key: Some("sample"),
        event: Some(&event),
        now: sample_time(),
        timezone: chrono_tz::Asia::Tokyo,
        public_base_url: "https://renkei.example",
    };
    context_json(&campaign.id, &campaign.name, &ctx, true)
}

/// The reason of a Handlebars render error, with where it happened.
pub(crate) fn render_message(error: &handlebars::RenderError) -> String {
    let reason = match error.reason() {
        handlebars::RenderErrorReason::Other(message) => message.clone(),
        other => other.to_string(),
    };
    match (error.line_no, error.column_no) {
        (Some(line), Some(col)) => format!("{reason} (line {line}, column {col})"),
        _ => reason,
    }
}

/// A template that does not compile: an unclosed block where it opened,
/// else the grammar's own position and reason.
pub(crate) fn syntax_diagnostic(path: &Path, text: &str, error: &handlebars::TemplateError) -> Diagnostic {
    if let Some((offset, message)) = unclosed_block(text) {
        let (line, col) = line_col(text, offset);
        return Diagnostic::new(path, Pos { line, col }, message);
    }
    let (line, col) = error.pos().unwrap_or((1, 1));
    let pos = Pos { line: to_u32(line), col: to_u32(col) };
    Diagnostic::new(path, pos, format!("template error: {}", error.reason()))
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

/// Template names a campaign file mentions (`template: NAME` lines), so
/// that `load` reads only those files. Validation is from_sources' job.
fn template_names(text: &str) -> Vec<String> {
    use renkei_segments::yaml::{Node, NodeKind};
    /// Every `template: NAME` value, however deep (messages, variants).
    fn walk(node: &Node, out: &mut Vec<String>) {
        match &node.kind {
            NodeKind::Map(fields) => {
                for (key, value) in fields {
                    match (key.key_text().as_deref(), &value.kind) {
                        (Some("template"), NodeKind::Str(name)) if crate::parse::is_valid_template_name(name) => {
                            out.push(name.clone());
                        }
                        _ => walk(value, out),
                    }
                }
            }
            NodeKind::Seq(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(root) = renkei_segments::yaml::parse_document(text) {
        walk(&root, &mut out);
    }
    out
}
