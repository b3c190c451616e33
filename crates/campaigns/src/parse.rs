//! Turns one campaign file into a [`Campaign`], reporting every problem
//! found with the position of the offending key or value (the approach of
//! `renkei_segments`' parser).

use crate::model::{
    Campaign, Exit, FanoutTarget, FrequencyCap, Goal, Holdout, MessageSpec, QuietHours, Step, Timing, Trigger, Unless,
    Variant,
};
use chrono::{Duration, NaiveTime};
use renkei_core::{EventType, SpanDuration};
use renkei_segments::diagnostic::{Entries, NodeReader, shorten};
use renkei_segments::yaml::{Node, NodeKind, Pos, parse_document};
use renkei_segments::{Diagnostic, SegmentSet};
use std::path::Path;
use std::str::FromStr;

pub(crate) const MAX_MESSAGES: usize = 5;
const CAMPAIGN_KEYS: [&str; 13] = [
    "id",
    "name",
    "description",
    "trigger",
    "audience",
    "messages",
    "variants",
    "frequency_cap",
    "quiet_hours",
    "goal",
    "holdout",
    "steps",
    "exit",
];
const TRIGGER_KINDS: [&str; 4] = ["segment_entered", "schedule", "event", "fanout"];

/// Template names become file names: letters, digits, `_` and `-` only.
pub(crate) fn is_valid_template_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Where each message's parts were written, for diagnostics found later
/// (unknown template, alt_text that does not compile).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessagePositions {
    pub template: Pos,
    pub alt_text: Pos,
}

/// What one file yielded: its id (even when the rest is invalid, so that
/// duplicates are still found) and, if valid, the campaign.
pub(crate) struct ParsedFile {
    pub id: Option<(String, Pos)>,
    pub campaign: Option<(Campaign, Vec<MessagePositions>)>,
}

pub(crate) fn parse_file(
    file: &Path,
    text: &str,
    segments: &SegmentSet,
    diagnostics: &mut Vec<Diagnostic>,
) -> ParsedFile {
    let mut parser = Parser { r: NodeReader::new(file, diagnostics), segments };
    match parse_document(text) {
        Ok(root) => parser.campaign(&root),
        Err(error) => {
            parser.r.error(error.pos, error.message);
            ParsedFile { id: None, campaign: None }
        }
    }
}

pub(crate) struct Parser<'a> {
    pub r: NodeReader<'a>,
    pub segments: &'a SegmentSet,
}

pub(crate) fn has(entries: &Entries<'_>, key: &str) -> bool {
    entries.iter().any(|(k, _, _)| *k == key)
}

impl Parser<'_> {
    /// Reports every key not in `allowed`, naming `place`.
    pub fn unknown_keys(&mut self, entries: &Entries<'_>, allowed: &[&str], place: &str) {
        for &(key, key_node, _) in entries {
            if !allowed.contains(&key) {
                self.r.error(
                    key_node.pos,
                    format!("unknown key `{key}` in {place} (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    pub fn require(&mut self, entries: &Entries<'_>, node: &Node, keys: &[&str], place: &str) {
        for key in keys {
            if !has(entries, key) {
                self.r.error(node.pos, format!("missing required key `{key}` in {place}"));
            }
        }
    }

    /// A known segment id.
    pub fn segment_ref(&mut self, node: &Node) -> Option<String> {
        let id = self.r.string(node)?;
        if self.segments.segment(&id).is_none() {
            self.r.error(node.pos, format!("unknown segment `{}`", shorten(&id)));
            return None;
        }
        Some(id)
    }

    fn duration_text(&mut self, node: &Node) -> Option<String> {
        match &node.kind {
            NodeKind::Str(text) => Some(text.clone()),
            NodeKind::Int(_) | NodeKind::UInt(_) | NodeKind::Float(_) => node.key_text(),
            _ => {
                self.r.wrong_type(node, "a duration like 90d, 1h or 30s");
                None
            }
        }
    }

    /// A non-negative duration: an integer and a unit s, m, h, d or w.
    pub fn duration(&mut self, node: &Node) -> Option<Duration> {
        let text = self.duration_text(node)?;
        match text.parse::<SpanDuration>() {
            Ok(duration) => Some(duration.to_chrono()),
            Err(error) => {
                self.r.error(node.pos, error.to_string());
                None
            }
        }
    }

    /// A duration longer than 0; `message` when it is 0.
    fn positive_duration(&mut self, node: &Node, message: &str) -> Option<Duration> {
        let duration = self.duration(node)?;
        if duration <= Duration::zero() {
            self.r.error(node.pos, message);
            return None;
        }
        Some(duration)
    }

    /// A duration that may be negative (`-1d`) or carry a `+`.
    fn signed_duration(&mut self, node: &Node) -> Option<Duration> {
        let text = self.duration_text(node)?;
        let (negative, magnitude) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(&text)),
        };
        match magnitude.parse::<SpanDuration>() {
            Ok(duration) => Some(if negative { -duration.to_chrono() } else { duration.to_chrono() }),
            Err(_) => {
                self.r.error(
                    node.pos,
                    format!(
                        "invalid offset {:?}: expected an optional sign, an integer and a unit s, m, h, d or w (e.g. -1d, 2h)",
                        shorten(&text)
                    ),
                );
                None
            }
        }
    }

    fn event_type(&mut self, node: &Node) -> Option<String> {
        let text = self.r.string(node)?;
        match EventType::parse(&text) {
            Ok(event_type) => Some(event_type.as_str().to_string()),
            Err(error) => {
                self.r.error(node.pos, format!("invalid event type: {error}"));
                None
            }
        }
    }

    fn property_name(&mut self, node: &Node) -> Option<String> {
        let text = self.r.string(node)?;
        if text.is_empty() || text.split('.').any(str::is_empty) {
            self.r.error(node.pos, format!("invalid property name {:?}: empty path segment", shorten(&text)));
            return None;
        }
        Some(text)
    }

    fn campaign(&mut self, root: &Node) -> ParsedFile {
        let errors_before = self.r.errors;
        let Some(entries) = self.r.entries(root, "a campaign (a map with id, name, trigger, messages)") else {
            return ParsedFile { id: None, campaign: None };
        };
        self.unknown_keys(&entries, &CAMPAIGN_KEYS, "a campaign");
        self.require(&entries, root, &["id", "name", "trigger"], "a campaign");
        self.one_content(&entries, root, "a campaign");
        let (mut id, mut name, mut description, mut trigger, mut audience) = (None, None, None, None, None);
        let (mut messages, mut frequency_cap, mut quiet_hours) = (None, None, None);
        let (mut goal, mut holdout, mut variants) = (None, None, Vec::new());
        let (mut steps, mut exit, mut exit_pos) = (Vec::new(), None, None);
        for &(key, _, value) in &entries {
            match key {
                "id" => id = self.r.id("campaign", value),
                "name" => name = self.non_empty_string(value, "name"),
                "description" => description = self.r.string(value),
                "trigger" => trigger = self.trigger(value),
                "audience" => audience = self.segment_ref(value),
                "messages" => messages = self.messages(value),
                "frequency_cap" => frequency_cap = self.frequency_cap(value),
                "quiet_hours" => quiet_hours = self.quiet_hours(value),
                "goal" => goal = self.goal(value),
                "holdout" => holdout = self.holdout(value),
                "variants" => {
                    if let Some((arms, specs, positions)) = self.variants(value, 0) {
                        variants = arms;
                        messages = Some((specs, positions));
                    }
                }
                "steps" => {
                    if let Some((parsed, specs, positions)) = self.steps(value) {
                        steps = parsed;
                        messages = Some((specs, positions));
                    }
                }
                "exit" => {
                    exit_pos = Some(value.pos);
                    exit = self.exit(value);
                }
                _ => {}
            }
        }
        self.check_steps(&entries, trigger.as_ref(), goal.is_some(), exit.as_ref(), exit_pos);
        let campaign = match (&id, name, trigger, messages) {
            (Some((id, _)), Some(name), Some(trigger), Some((messages, positions)))
                if self.r.errors == errors_before =>
            {
                Some((
                    Campaign {
                        id: id.clone(),
                        name,
                        description,
                        file: self.r.file.to_path_buf(),
                        trigger,
                        audience,
                        messages,
                        frequency_cap,
                        quiet_hours,
                        goal,
                        holdout,
                        variants,
                        steps,
                        exit,
                    },
                    positions,
                ))
            }
            _ => None,
        };
        ParsedFile { id, campaign }
    }

    fn non_empty_string(&mut self, node: &Node, what: &str) -> Option<String> {
        let text = self.r.string(node)?;
        if text.trim().is_empty() {
            self.r.error(node.pos, format!("`{what}` must not be empty"));
            return None;
        }
        Some(text)
    }

    fn trigger(&mut self, node: &Node) -> Option<Trigger> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a trigger (a map with one of segment_entered, schedule, event, fanout)")?;
        let mut kind: Option<(&str, &Node)> = None;
        for &(key, key_node, value) in &entries {
            if !TRIGGER_KINDS.contains(&key) {
                continue;
            }
            match kind {
                None => kind = Some((key, value)),
                Some((first, _)) => self.r.error(
                    key_node.pos,
                    format!(
                        "a trigger has exactly one of segment_entered, schedule, event; found `{first}` and `{key}`"
                    ),
                ),
            }
        }
        let Some((kind, value)) = kind else {
            self.unknown_keys(
                &entries,
                &["segment_entered", "schedule", "event", "fanout", "audience", "at", "delay", "unless", "where"],
                "a trigger",
            );
            self.r.error(node.pos, "a trigger needs exactly one of: segment_entered, schedule, event");
            return None;
        };
        let allowed: &[&str] = match kind {
            "segment_entered" => &["segment_entered"],
            "schedule" => &["schedule", "audience"],
            "fanout" => &["fanout"],
            _ => &["event", "where", "at", "delay", "unless"],
        };
        for &(key, key_node, _) in &entries {
            if allowed.contains(&key) || TRIGGER_KINDS.contains(&key) {
                continue;
            }
            let message = match key {
                "audience" => "`audience` inside `trigger` belongs to a schedule trigger (use the top-level `audience` to filter other campaigns)".to_string(),
                "where" if kind == "fanout" => "a fan-out's `where` goes inside `fanout` (`fanout: {event, where, to}`)".to_string(),
                "at" | "delay" | "unless" | "where" => format!("`{key}` belongs to an event trigger"),
                _ => format!("unknown key `{key}` in a {kind} trigger (expected one of: {})", allowed.join(", ")),
            };
            self.r.error(key_node.pos, message);
        }
        let get = |key: &str| entries.iter().find(|(k, _, _)| *k == key).map(|&(_, key_node, value)| (key_node, value));
        let trigger = match kind {
            "segment_entered" => self.segment_ref(value).map(|segment| Trigger::SegmentEntered { segment }),
            "schedule" => {
                let schedule = self.cron(value);
                let audience = match get("audience") {
                    Some((_, audience)) => self.segment_ref(audience),
                    None => {
                        self.r.error(
                            node.pos,
                            "a schedule trigger needs `audience: SEGMENT` (who receives it at each fire)",
                        );
                        None
                    }
                };
                match (schedule, audience) {
                    (Some((expr, schedule)), Some(audience)) => Some(Trigger::Schedule { expr, schedule, audience }),
                    _ => None,
                }
            }
            "fanout" => self.fanout(value),
            _ => {
                let event_type = self.event_type(value);
                let timing = match (get("delay"), get("at")) {
                    (Some(_), Some((at_key, _))) => {
                        self.r.error(at_key.pos, "`delay` and `at` are mutually exclusive: use one");
                        None
                    }
                    (Some((_, delay)), None) => self.duration(delay).map(Timing::Delay),
                    (None, Some((_, at))) => self.at(at),
                    (None, None) => Some(Timing::Immediately),
                };
                let unless = match get("unless") {
                    Some((_, unless)) => self.unless(unless).map(Some),
                    None => Some(None),
                };
                let filters = match get("where") {
                    Some((_, filters)) => renkei_segments::parse_where(&mut self.r, filters),
                    None => Some(Vec::new()),
                };
                match (event_type, timing, unless, filters) {
                    (Some(event_type), Some(timing), Some(unless), Some(filters)) => {
                        Some(Trigger::Event { event_type, timing, unless, filters })
                    }
                    _ => None,
                }
            }
        };
        if self.r.errors != errors_before {
            return None;
        }
        trigger
    }

    /// `fanout: {event: TYPE, where?: {…}, to: {event: TYPE | [TYPE, …], match: [PROPERTY, …], within: DURATION}}`.
    fn fanout(&mut self, node: &Node) -> Option<Trigger> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a map {event: TYPE, where?: {…}, to: {event, match, within}}")?;
        self.unknown_keys(&entries, &["event", "where", "to"], "`fanout`");
        self.require(&entries, node, &["event", "to"], "`fanout`");
        let (mut event_type, mut filters, mut to) = (None, Some(Vec::new()), None);
        for &(key, _, value) in &entries {
            match key {
                "event" => event_type = self.event_type(value),
                "where" => filters = renkei_segments::parse_where(&mut self.r, value),
                "to" => to = self.fanout_target(value),
                _ => {}
            }
        }
        if self.r.errors != errors_before {
            return None;
        }
        Some(Trigger::Fanout { event_type: event_type?, filters: filters?, to: to? })
    }

    /// `to: {event: TYPE | [TYPE, …], match: [PROPERTY, …], within: DURATION}`.
    fn fanout_target(&mut self, node: &Node) -> Option<FanoutTarget> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a map {event: TYPE, match: [PROPERTY, …], within: DURATION}")?;
        self.unknown_keys(&entries, &["event", "match", "within"], "`fanout.to`");
        self.require(&entries, node, &["event", "match", "within"], "`fanout.to`");
        let (mut event_types, mut match_props, mut within) = (Vec::new(), Vec::new(), None);
        for &(key, _, value) in &entries {
            match key {
                "event" => event_types = self.event_types(value),
                "match" => match &value.kind {
                    NodeKind::Seq(items) if items.is_empty() => self.r.error(
                        value.pos,
                        "`match` needs at least 1 property: without one every such event would match every trigger",
                    ),
                    NodeKind::Seq(items) => {
                        match_props = items.iter().filter_map(|item| self.match_property(item)).collect();
                    }
                    _ => self.r.wrong_type(value, "a list of property names"),
                },
                "within" => {
                    within = self.positive_duration(value, "`within` must be longer than 0: no event could match")
                }
                _ => {}
            }
        }
        if self.r.errors != errors_before {
            return None;
        }
        Some(FanoutTarget { event_types, match_props, within: within? })
    }

    /// One event type, or a non-empty list of distinct ones.
    fn event_types(&mut self, node: &Node) -> Vec<String> {
        let NodeKind::Seq(items) = &node.kind else {
            return self.event_type(node).into_iter().collect();
        };
        if items.is_empty() {
            self.r.error(node.pos, "`event` needs at least 1 event type");
        }
        let mut types: Vec<String> = Vec::new();
        for item in items {
            if let Some(event_type) = self.event_type(item) {
                if types.contains(&event_type) {
                    self.r.error(item.pos, format!("duplicate event type `{event_type}`"));
                } else {
                    types.push(event_type);
                }
            }
        }
        types
    }

    /// A fan-out's match property: it becomes part of the query's SQL, so
    /// only `[A-Za-z0-9_]` path segments.
    fn match_property(&mut self, node: &Node) -> Option<String> {
        let name = self.property_name(node)?;
        if !name.split('.').all(|part| part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')) {
            self.r.error(
                node.pos,
                format!("invalid match property {:?}: letters, digits and `_` only (dots for nested)", shorten(&name)),
            );
            return None;
        }
        Some(name)
    }

    fn cron(&mut self, node: &Node) -> Option<(String, cron::Schedule)> {
        let expr = self.r.string(node)?;
        match cron::Schedule::from_str(&expr) {
            Ok(schedule) => Some((expr, schedule)),
            Err(error) => {
                let fields = expr.split_whitespace().count();
                let hint = if fields == 5 {
                    " (renkei's cron has seconds first: 6 or 7 fields `sec min hour day month weekday [year]`, e.g. \"0 0 9 * * *\")"
                } else {
                    " (6 or 7 fields `sec min hour day month weekday [year]`; weekdays are 1-7 from Sunday, or names like Mon)"
                };
                self.r.error(node.pos, format!("invalid cron expression {:?}: {error}{hint}", shorten(&expr)));
                None
            }
        }
    }

    fn at(&mut self, node: &Node) -> Option<Timing> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a map {property: NAME, offset: DURATION}")?;
        self.unknown_keys(&entries, &["property", "offset"], "`at`");
        self.require(&entries, node, &["property"], "`at`");
        let (mut property, mut offset) = (None, Some(Duration::zero()));
        for &(key, _, value) in &entries {
            match key {
                "property" => property = self.property_name(value),
                "offset" => offset = self.signed_duration(value),
                _ => {}
            }
        }
        if self.r.errors != errors_before {
            return None;
        }
        Some(Timing::At { property: property?, offset: offset? })
    }

    /// Exactly one of `messages`, `variants` (and for a campaign `steps`).
    fn one_content(&mut self, entries: &Entries<'_>, node: &Node, place: &str) {
        let given: Vec<(&str, Pos)> = entries
            .iter()
            .filter(|(k, _, _)| matches!(*k, "messages" | "variants" | "steps"))
            .map(|(k, key, _)| (*k, key.pos))
            .collect();
        match given.as_slice() {
            [] if place == "a campaign" => {
                self.r.error(node.pos, "missing required key `messages` (or `variants`, `steps`) in a campaign")
            }
            [] => self.r.error(node.pos, format!("missing required key `messages` (or `variants`) in {place}")),
            [_] => {}
            [(first, _), (second, pos), ..] => {
                self.r.error(*pos, format!("`{first}` and `{second}` exclude each other: give one"))
            }
        }
    }

    /// `steps: [{id, wait?, at?, if?, messages | variants}, …]`: the steps,
    /// and all their messages one after the other.
    fn steps(&mut self, node: &Node) -> Option<(Vec<Step>, Vec<MessageSpec>, Vec<MessagePositions>)> {
        let NodeKind::Seq(items) = &node.kind else {
            self.r.wrong_type(node, "a list of steps {id, wait?, at?, if?, messages}");
            return None;
        };
        if items.is_empty() {
            self.r.error(node.pos, "`steps` needs at least 1 step");
            return None;
        }
        let errors_before = self.r.errors;
        let (mut steps, mut specs, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for item in items {
            let Some(entries) = self.r.entries(item, "a step (a map with id and messages)") else { continue };
            self.unknown_keys(&entries, &["id", "wait", "at", "if", "messages", "variants"], "a step");
            self.require(&entries, item, &["id"], "a step");
            self.one_content(&entries, item, "a step");
            let mut step = Step {
                id: String::new(),
                wait: Duration::zero(),
                at: None,
                if_segment: None,
                messages: specs.len()..specs.len(),
                variants: Vec::new(),
            };
            let mut content = None;
            for &(key, _, value) in &entries {
                match key {
                    "id" => {
                        let earlier: Vec<&str> = steps.iter().map(|s: &Step| s.id.as_str()).collect();
                        step.id = self.short_id(value, "step", &earlier).unwrap_or_default();
                    }
                    "wait" => step.wait = self.duration(value).unwrap_or_default(),
                    "at" => step.at = self.clock_time(value),
                    "if" => step.if_segment = self.step_if(value),
                    "messages" => content = self.messages(value).map(|(s, p)| (Vec::new(), s, p)),
                    "variants" => content = self.variants(value, specs.len()),
                    _ => {}
                }
            }
            if let Some((variants, more, at)) = content {
                step.messages = specs.len()..specs.len() + more.len();
                step.variants = variants;
                specs.extend(more);
                positions.extend(at);
                steps.push(step);
            }
        }
        (self.r.errors == errors_before).then_some((steps, specs, positions))
    }

    /// `if: {segment: ID}`.
    fn step_if(&mut self, node: &Node) -> Option<String> {
        let entries = self.r.entries(node, "a map {segment: ID}")?;
        self.unknown_keys(&entries, &["segment"], "`if`");
        self.require(&entries, node, &["segment"], "`if`");
        let value = entries.iter().find(|(k, _, _)| *k == "segment").map(|&(_, _, value)| value)?;
        self.segment_ref(value)
    }

    /// `exit: {goal?: true, segment_exited?: ID, event?: {event, match?}}`.
    fn exit(&mut self, node: &Node) -> Option<Exit> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a map {goal: true, segment_exited: ID, event: {event, match}}")?;
        self.unknown_keys(&entries, &["goal", "segment_exited", "event"], "`exit`");
        let mut exit = Exit::default();
        for &(key, _, value) in &entries {
            match key {
                "goal" => match value.kind {
                    NodeKind::Bool(flag) => exit.goal = flag,
                    _ => self.r.wrong_type(value, "true or false"),
                },
                "segment_exited" => exit.segment_exited = self.segment_ref(value),
                "event" => exit.event = self.unless(value),
                _ => {}
            }
        }
        (self.r.errors == errors_before).then_some(exit)
    }

    /// Steps need an event or segment-entry trigger; `exit` needs steps, and
    /// `exit.goal` a goal.
    fn check_steps(
        &mut self,
        entries: &Entries<'_>,
        trigger: Option<&Trigger>,
        has_goal: bool,
        exit: Option<&Exit>,
        exit_pos: Option<Pos>,
    ) {
        let steps_pos = entries.iter().find(|(k, _, _)| *k == "steps").map(|(_, key, _)| key.pos);
        if let (Some(pos), Some(Trigger::Schedule { .. })) = (steps_pos, trigger) {
            self.r.error(pos, "`steps` need an `event` or `segment_entered` trigger, not a `schedule`");
        }
        if let Some(pos) = exit_pos {
            if steps_pos.is_none() {
                self.r.error(pos, "`exit` ends a sequence: it needs `steps`");
            } else if exit.is_some_and(|e| e.goal) && !has_goal {
                self.r.error(pos, "`exit.goal` needs a `goal` to convert on");
            }
        }
    }

    /// A `[a-z0-9_]{1,32}` id of a `what` (variant, step), unique among `earlier`.
    fn short_id(&mut self, node: &Node, what: &str, earlier: &[&str]) -> Option<String> {
        let text = self.r.string(node)?;
        let valid = !text.is_empty()
            && text.len() <= 32
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            self.r.error(node.pos, format!("invalid {what} id {:?}: must match [a-z0-9_]{{1,32}}", shorten(&text)));
            return None;
        }
        if earlier.contains(&text.as_str()) {
            self.r.error(node.pos, format!("duplicate {what} id `{text}`"));
            return None;
        }
        Some(text)
    }

    /// `variants: [{id, weight, messages}, …]`: the arms, and their messages
    /// one after the other (with where each was written), numbered from
    /// `base` in the campaign's messages.
    fn variants(
        &mut self,
        node: &Node,
        base: usize,
    ) -> Option<(Vec<Variant>, Vec<MessageSpec>, Vec<MessagePositions>)> {
        let NodeKind::Seq(items) = &node.kind else {
            self.r.wrong_type(node, "a list of variants {id, weight, messages}");
            return None;
        };
        if items.len() < 2 {
            self.r.error(node.pos, format!("`variants` needs at least 2 variants, found {}", items.len()));
            return None;
        }
        let errors_before = self.r.errors;
        let (mut arms, mut specs, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for item in items {
            let Some(entries) = self.r.entries(item, "a variant (a map with id, weight, messages)") else { continue };
            self.unknown_keys(&entries, &["id", "weight", "messages"], "a variant");
            self.require(&entries, item, &["id", "weight", "messages"], "a variant");
            let (mut id, mut weight, mut messages) = (None, None, None);
            for &(key, _, value) in &entries {
                match key {
                    "id" => {
                        let earlier: Vec<&str> = arms.iter().map(|a: &Variant| a.id.as_str()).collect();
                        id = self.short_id(value, "variant", &earlier);
                    }
                    "weight" => weight = self.weight(value),
                    "messages" => messages = self.messages(value),
                    _ => {}
                }
            }
            if let (Some(id), Some(weight), Some((more, at))) = (id, weight, messages) {
                let start = base + specs.len();
                arms.push(Variant { id, weight, messages: start..start + more.len() });
                specs.extend(more);
                positions.extend(at);
            }
        }
        let total: u32 = arms.iter().map(|a| a.weight).sum();
        if self.r.errors == errors_before && total != 100 {
            self.r.error(node.pos, format!("variant weights must sum to 100, found {total}"));
        }
        (self.r.errors == errors_before).then_some((arms, specs, positions))
    }

    /// A whole percent from 1 to 100.
    fn weight(&mut self, node: &Node) -> Option<u32> {
        match &node.kind {
            NodeKind::Int(n) if (1..=100).contains(n) => Some(*n as u32),
            NodeKind::UInt(n) if (1..=100).contains(n) => Some(*n as u32),
            _ => {
                self.r.wrong_type(node, "a whole percent from 1 to 100");
                None
            }
        }
    }

    fn goal(&mut self, node: &Node) -> Option<Goal> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a map {event: TYPE, where?: {…}, within: DURATION, value?: PROPERTY}")?;
        self.unknown_keys(&entries, &["event", "where", "within", "value"], "`goal`");
        self.require(&entries, node, &["event", "within"], "`goal`");
        let (mut event, mut filters, mut within, mut value) = (None, Some(Vec::new()), None, None);
        for &(key, _, item) in &entries {
            match key {
                "event" => event = self.event_type(item),
                "where" => filters = renkei_segments::parse_where(&mut self.r, item),
                "within" => {
                    within = self.positive_duration(item, "`within` must be longer than 0: nothing could convert")
                }
                "value" => value = self.property_name(item),
                _ => {}
            }
        }
        if self.r.errors != errors_before {
            return None;
        }
        Some(Goal { event: event?, filters: filters?, within: within?, value })
    }

    /// `N%` with N in (0, 50], at most two decimals.
    fn holdout(&mut self, node: &Node) -> Option<Holdout> {
        let text = match &node.kind {
            NodeKind::Str(text) => text.clone(),
            _ => {
                self.r.wrong_type(node, "a share like 10%");
                return None;
            }
        };
        let basis_points = text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|p| p.is_finite() && (p * 100.0).fract() == 0.0)
            .map(|p| (p * 100.0) as i64);
        match basis_points {
            Some(bp) if bp > 0 && bp <= i64::from(Holdout::MAX_BASIS_POINTS) => {
                Some(Holdout { basis_points: bp as u32 })
            }
            Some(_) => {
                self.r.error(node.pos, format!("holdout {:?} must be more than 0% and at most 50%", shorten(&text)));
                None
            }
            None => {
                self.r.error(
                    node.pos,
                    format!("invalid holdout {:?}: expected a share like 10% (at most two decimals)", shorten(&text)),
                );
                None
            }
        }
    }

    fn unless(&mut self, node: &Node) -> Option<Unless> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a map {event: TYPE, match: [PROPERTY, …]}")?;
        self.unknown_keys(&entries, &["event", "match"], "`unless`");
        self.require(&entries, node, &["event"], "`unless`");
        let (mut event, mut match_props) = (None, Vec::new());
        for &(key, _, value) in &entries {
            match key {
                "event" => event = self.event_type(value),
                "match" => match &value.kind {
                    NodeKind::Seq(items) => {
                        match_props = items.iter().filter_map(|item| self.property_name(item)).collect();
                    }
                    _ => self.r.wrong_type(value, "a list of property names"),
                },
                _ => {}
            }
        }
        if self.r.errors != errors_before {
            return None;
        }
        Some(Unless { event: event?, match_props })
    }

    fn messages(&mut self, node: &Node) -> Option<(Vec<MessageSpec>, Vec<MessagePositions>)> {
        let NodeKind::Seq(items) = &node.kind else {
            self.r.wrong_type(node, "a list of 1 to 5 messages");
            return None;
        };
        if items.is_empty() || items.len() > MAX_MESSAGES {
            self.r.error(node.pos, format!("a campaign has 1 to {MAX_MESSAGES} messages, found {}", items.len()));
            return None;
        }
        let errors_before = self.r.errors;
        let mut specs = Vec::with_capacity(items.len());
        let mut positions = Vec::with_capacity(items.len());
        for item in items {
            let Some(entries) = self.r.entries(item, "a message (a map with template, alt_text)") else { continue };
            self.unknown_keys(&entries, &["template", "alt_text"], "a message");
            self.require(&entries, item, &["template", "alt_text"], "a message");
            let (mut template, mut alt_text) = (None, None);
            let (mut template_pos, mut alt_text_pos) = (item.pos, item.pos);
            for &(key, _, value) in &entries {
                match key {
                    "template" => {
                        template_pos = value.pos;
                        template = self.r.string(value).and_then(|name| {
                            if is_valid_template_name(&name) {
                                Some(name)
                            } else {
                                self.r.error(
                                    value.pos,
                                    format!("invalid template name {:?}: letters, digits, `_` and `-` only (the file is templates/NAME.json.hbs)", shorten(&name)),
                                );
                                None
                            }
                        });
                    }
                    "alt_text" => {
                        alt_text_pos = value.pos;
                        alt_text = self.non_empty_string(value, "alt_text");
                    }
                    _ => {}
                }
            }
            if let (Some(template), Some(alt_text)) = (template, alt_text) {
                specs.push(MessageSpec { template, alt_text });
                positions.push(MessagePositions { template: template_pos, alt_text: alt_text_pos });
            }
        }
        (self.r.errors == errors_before).then_some((specs, positions))
    }

    fn frequency_cap(&mut self, node: &Node) -> Option<FrequencyCap> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a map {max: N, per: DURATION}")?;
        self.unknown_keys(&entries, &["max", "per"], "`frequency_cap`");
        self.require(&entries, node, &["max", "per"], "`frequency_cap`");
        let (mut max, mut per) = (None, None);
        for &(key, _, value) in &entries {
            match key {
                "max" => {
                    max = match value.kind {
                        NodeKind::UInt(n) if n >= 1 => u32::try_from(n).ok(),
                        NodeKind::Int(n) if n >= 1 => u32::try_from(n).ok(),
                        _ => None,
                    };
                    if max.is_none() {
                        self.r.error(value.pos, "`max` must be an integer of at least 1");
                    }
                }
                "per" => per = self.positive_duration(value, "`per` must be longer than 0s"),
                _ => {}
            }
        }
        if self.r.errors != errors_before {
            return None;
        }
        Some(FrequencyCap { max: max?, per: per? })
    }

    fn quiet_hours(&mut self, node: &Node) -> Option<QuietHours> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a map {from: \"HH:MM\", to: \"HH:MM\"}")?;
        self.unknown_keys(&entries, &["from", "to"], "`quiet_hours`");
        self.require(&entries, node, &["from", "to"], "`quiet_hours`");
        let (mut from, mut to) = (None, None);
        let mut to_pos = node.pos;
        for &(key, _, value) in &entries {
            match key {
                "from" => from = self.clock_time(value),
                "to" => {
                    to_pos = value.pos;
                    to = self.clock_time(value);
                }
                _ => {}
            }
        }
        if let (Some(from), Some(to)) = (from, to) {
            if from == to {
                self.r.error(to_pos, "quiet hours `from` and `to` must differ");
            }
        }
        if self.r.errors != errors_before {
            return None;
        }
        Some(QuietHours { from: from?, to: to? })
    }

    /// A local time of day written `"HH:MM"` (00:00–23:59).
    fn clock_time(&mut self, node: &Node) -> Option<NaiveTime> {
        let NodeKind::Str(text) = &node.kind else {
            self.r.error(node.pos, format!("expected a time \"HH:MM\" (quoted), got {}", node.kind.describe()));
            return None;
        };
        let bytes = text.as_bytes();
        let shaped =
            bytes.len() == 5 && bytes[2] == b':' && bytes.iter().enumerate().all(|(i, b)| i == 2 || b.is_ascii_digit());
        let parsed = if shaped { NaiveTime::parse_from_str(text, "%H:%M").ok() } else { None };
        if parsed.is_none() {
            self.r.error(node.pos, format!("invalid time {:?}: expected \"HH:MM\" from 00:00 to 23:59", shorten(text)));
        }
        parsed
    }
}
