//! Turns one segment file into a [`Segment`], reporting every problem found
//! with the position of the offending key or value.

use crate::ast::{
    Aggregate, AggregateKind, AnniversaryWhen, Comparator, Condition, EventCondition, FieldPath, FollowUp,
    PropertyFilter, Segment,
};
use crate::diagnostic::{Diagnostic, Entries, NodeReader, is_valid_id, shorten};
use crate::yaml::{Node, NodeKind, Pos, parse_document};
use renkei_core::{EventType, SpanDuration};
use serde_json::{Number, Value};
use std::path::Path;

pub(crate) const CONDITION_KEYS: [&str; 9] =
    ["all", "any", "not", "attribute", "anniversary", "linked", "following", "segment", "event"];
const COMPARATOR_KEYS: [&str; 12] =
    ["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "exists", "within", "older_than"];
const AGGREGATE_KEYS: [&str; 5] = ["count", "sum", "avg", "min", "max"];
const ANNIVERSARY_KEYS: [&str; 3] = ["today", "this_month", "within_days"];
const EVENT_OPTION_KEYS: [&str; 5] = ["where", "within", "older_than", "followed_by", "not_followed_by"];
/// Generous but bounded: a year and a day covers every month-day once.
const MAX_WITHIN_DAYS: u64 = 366;

/// What one file yielded: its id (even when the rest is invalid, so that
/// references to it are not reported as unknown) and, if valid, the segment.
pub(crate) struct ParsedFile {
    pub id: Option<(String, Pos)>,
    pub segment: Option<Segment>,
}

/// Comparators mean slightly different things in each place they appear.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ComparatorContext {
    /// `attribute:` and `where:`: any JSON scalar.
    Value,
    /// `count:` / `sum:` …: the aggregate is a number.
    Aggregate,
}

pub(crate) fn parse_file(file: &Path, text: &str, diagnostics: &mut Vec<Diagnostic>) -> ParsedFile {
    let mut reader = NodeReader::new(file, diagnostics);
    let mut parser = Parser { r: &mut reader };
    match parse_document(text) {
        Ok(root) => parser.segment(&root),
        Err(error) => {
            parser.r.error(error.pos, error.message);
            ParsedFile { id: None, segment: None }
        }
    }
}

struct Parser<'r, 'a> {
    r: &'r mut NodeReader<'a>,
}

/// A `where:` map of event properties (as in an event condition), for other
/// files that filter events the same way (campaign goals); problems are
/// reported to `reader`.
pub fn parse_where(reader: &mut NodeReader<'_>, node: &Node) -> Option<Vec<PropertyFilter>> {
    Parser { r: reader }.filters(node)
}

impl Parser<'_, '_> {
    fn segment(&mut self, root: &Node) -> ParsedFile {
        let errors_before = self.r.errors;
        let Some(entries) = self.r.entries(root, "a segment (a map with id, name, rule)") else {
            return ParsedFile { id: None, segment: None };
        };
        let (mut id, mut name, mut description, mut rule) = (None, None, None, None);
        let mut seen_rule = false;
        for (key, key_node, value) in &entries {
            match *key {
                "id" => id = self.r.id("segment", value),
                "name" => name = self.r.string(value),
                "description" => description = self.r.string(value),
                "rule" => {
                    seen_rule = true;
                    rule = self.condition(value);
                }
                other => self
                    .r
                    .error(key_node.pos, format!("unknown key `{other}` (a segment has id, name, description, rule)")),
            }
        }
        for (required, present) in [("id", has(&entries, "id")), ("name", has(&entries, "name")), ("rule", seen_rule)] {
            if !present {
                self.r.error(root.pos, format!("missing required key `{required}`"));
            }
        }
        let segment = match (&id, name, rule) {
            (Some((id, _)), Some(name), Some(rule)) if self.r.errors == errors_before => {
                Some(Segment { id: id.clone(), name, description, rule, file: self.r.file.to_path_buf() })
            }
            _ => None,
        };
        ParsedFile { id, segment }
    }

    fn boolean(&mut self, node: &Node) -> Option<bool> {
        match node.kind {
            NodeKind::Bool(value) => Some(value),
            _ => {
                self.r.wrong_type(node, "true or false");
                None
            }
        }
    }

    fn duration(&mut self, node: &Node) -> Option<SpanDuration> {
        let text = match &node.kind {
            NodeKind::Str(text) => text.clone(),
            NodeKind::Int(_) | NodeKind::UInt(_) | NodeKind::Float(_) => node.key_text().unwrap_or_default(),
            _ => {
                self.r.wrong_type(node, "a duration like 90d, 1h or 30s");
                return None;
            }
        };
        match text.parse::<SpanDuration>() {
            Ok(duration) => Some(duration),
            Err(error) => {
                self.r.error(node.pos, error.to_string());
                None
            }
        }
    }

    fn event_type(&mut self, node: &Node) -> Option<EventType> {
        let text = self.r.string(node)?;
        match EventType::parse(&text) {
            Ok(event_type) => Some(event_type),
            Err(error) => {
                self.r.error(node.pos, format!("invalid event type: {error}"));
                None
            }
        }
    }

    fn field_path(&mut self, node: &Node, what: &str) -> Option<FieldPath> {
        let text = self.r.string(node)?;
        if text.is_empty() || text.split('.').any(str::is_empty) {
            self.r.error(node.pos, format!("invalid {what} name {:?}: empty path segment", shorten(&text)));
            return None;
        }
        Some(FieldPath::new(&text))
    }

    fn condition(&mut self, node: &Node) -> Option<Condition> {
        let entries = self.r.entries(
            node,
            "a condition (a map with one of all, any, not, attribute, anniversary, linked, following, segment, event)",
        )?;
        let mut chosen: Option<(&str, &Node, &Node)> = None;
        let mut ambiguous = false;
        for &(key, key_node, value) in &entries {
            if !CONDITION_KEYS.contains(&key) {
                continue;
            }
            match chosen {
                None => chosen = Some((key, key_node, value)),
                Some((first, _, _)) => {
                    ambiguous = true;
                    self.r.error(
                        key_node.pos,
                        format!("a condition has exactly one condition key, found `{first}` and `{key}` (combine them with `all` or `any`)"),
                    );
                }
            }
        }
        let Some((kind, kind_key, value)) = chosen else {
            for &(key, key_node, _) in &entries {
                self.unknown_key(key_node, key, "a condition");
            }
            self.r.error(node.pos, format!("a condition needs exactly one of: {}", CONDITION_KEYS.join(", ")));
            return None;
        };
        let options: Entries<'_> =
            entries.iter().copied().filter(|(key, _, _)| !CONDITION_KEYS.contains(key)).collect();
        let condition = match kind {
            "all" | "any" => {
                self.no_options(&options, kind);
                let items = self.condition_list(value)?;
                if kind == "all" { Condition::All(items) } else { Condition::Any(items) }
            }
            "not" => {
                self.no_options(&options, kind);
                Condition::Not(Box::new(self.condition(value)?))
            }
            "linked" | "following" => {
                self.no_options(&options, kind);
                let flag = self.boolean(value)?;
                if kind == "linked" { Condition::Linked(flag) } else { Condition::Following(flag) }
            }
            "segment" => {
                self.no_options(&options, kind);
                let id = self.r.string(value)?;
                if !is_valid_id(&id) {
                    self.r.error(
                        value.pos,
                        format!("invalid segment id {:?}: must match [a-z0-9_]{{1,64}}", shorten(&id)),
                    );
                    return None;
                }
                Condition::Segment { id, pos: value.pos }
            }
            "attribute" => self.attribute(kind_key, value, &options)?,
            "anniversary" => self.anniversary(kind_key, value, &options)?,
            _ => Condition::Event(self.event(value, &options)?),
        };
        if ambiguous { None } else { Some(condition) }
    }

    fn unknown_key(&mut self, key_node: &Node, key: &str, place: &str) {
        self.r.error(key_node.pos, format!("unknown key `{key}` in {place}"));
    }

    fn no_options(&mut self, options: &Entries<'_>, kind: &str) {
        for &(key, key_node, _) in options {
            self.r.error(key_node.pos, format!("unknown key `{key}`: `{kind}` takes no options"));
        }
    }

    fn condition_list(&mut self, node: &Node) -> Option<Vec<Condition>> {
        let NodeKind::Seq(items) = &node.kind else {
            self.r.wrong_type(node, "a list of conditions");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.condition(item) {
                Some(condition) => out.push(condition),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn attribute(&mut self, key_node: &Node, value: &Node, options: &Entries<'_>) -> Option<Condition> {
        let path = self.field_path(value, "attribute");
        let mut comparator = None;
        let mut ok = true;
        for &(key, option_key, option_value) in options {
            if !COMPARATOR_KEYS.contains(&key) {
                self.r.error(
                    option_key.pos,
                    format!(
                        "unknown key `{key}` in an attribute condition (expected one of: {})",
                        COMPARATOR_KEYS.join(", ")
                    ),
                );
                ok = false;
                continue;
            }
            if comparator.is_some() {
                self.r.error(
                    option_key.pos,
                    format!(
                        "an attribute condition takes one comparator; `{key}` is a second one (combine with `all`)"
                    ),
                );
                ok = false;
                continue;
            }
            comparator = Some(self.comparator(key, option_value, ComparatorContext::Value));
        }
        let Some(comparator) = comparator else {
            self.r.error(
                key_node.pos,
                format!("an attribute condition needs one comparator: {}", COMPARATOR_KEYS.join(", ")),
            );
            return None;
        };
        match (path, comparator, ok) {
            (Some(path), Some(comparator), true) => Some(Condition::Attribute { path, comparator }),
            _ => None,
        }
    }

    fn anniversary(&mut self, key_node: &Node, value: &Node, options: &Entries<'_>) -> Option<Condition> {
        let path = self.field_path(value, "attribute");
        let mut when = None;
        let mut seen = false;
        let mut ok = true;
        for &(key, option_key, option_value) in options {
            if !ANNIVERSARY_KEYS.contains(&key) {
                self.r.error(
                    option_key.pos,
                    format!(
                        "unknown key `{key}` in an anniversary condition (expected one of: {})",
                        ANNIVERSARY_KEYS.join(", ")
                    ),
                );
                ok = false;
                continue;
            }
            if seen {
                self.r.error(
                    option_key.pos,
                    format!(
                        "an anniversary condition takes one of today, this_month, within_days; `{key}` is a second one"
                    ),
                );
                ok = false;
                continue;
            }
            seen = true;
            when = match key {
                "within_days" => match option_value.kind {
                    NodeKind::UInt(days) if (1..=MAX_WITHIN_DAYS).contains(&days) => {
                        u32::try_from(days).ok().map(AnniversaryWhen::WithinDays)
                    }
                    _ => {
                        self.r.error(
                            option_value.pos,
                            format!("within_days must be an integer from 1 to {MAX_WITHIN_DAYS}"),
                        );
                        None
                    }
                },
                _ => match option_value.kind {
                    NodeKind::Bool(true) => {
                        Some(if key == "today" { AnniversaryWhen::Today } else { AnniversaryWhen::ThisMonth })
                    }
                    _ => {
                        self.r.error(option_value.pos, format!("`{key}` must be true"));
                        None
                    }
                },
            };
        }
        if !seen {
            self.r.error(
                key_node.pos,
                "an anniversary condition needs one of: today: true, this_month: true, within_days: N",
            );
            return None;
        }
        match (path, when, ok) {
            (Some(path), Some(when), true) => Some(Condition::Anniversary { path, when }),
            _ => None,
        }
    }

    fn event(&mut self, value: &Node, options: &Entries<'_>) -> Option<EventCondition> {
        let errors_before = self.r.errors;
        let event_type = self.event_type(value);
        let mut filters = Vec::new();
        let (mut within, mut older_than) = (None, None);
        let mut older_than_pos = Pos::START;
        let mut follow = None;
        let mut follow_key: Option<&str> = None;
        let mut aggregate = None;
        let mut aggregate_key: Option<&str> = None;
        for &(key, option_key, option_value) in options {
            match key {
                "where" => filters = self.filters(option_value).unwrap_or_default(),
                "within" => within = self.duration(option_value),
                "older_than" => {
                    older_than_pos = option_value.pos;
                    older_than = self.duration(option_value);
                }
                "followed_by" | "not_followed_by" => {
                    if let Some(first) = follow_key {
                        self.r.error(option_key.pos, format!("an event condition takes one of followed_by / not_followed_by; found `{first}` and `{key}`"));
                        continue;
                    }
                    follow_key = Some(key);
                    follow = self.follow_up(option_value, key == "not_followed_by");
                }
                _ if AGGREGATE_KEYS.contains(&key) => {
                    if let Some(first) = aggregate_key {
                        self.r.error(
                            option_key.pos,
                            format!("an event condition takes at most one aggregate; found `{first}` and `{key}`"),
                        );
                        continue;
                    }
                    aggregate_key = Some(key);
                    aggregate = self.aggregate(key, option_key, option_value);
                }
                _ => {
                    let mut expected: Vec<&str> = EVENT_OPTION_KEYS.to_vec();
                    expected.extend(AGGREGATE_KEYS);
                    self.r.error(
                        option_key.pos,
                        format!("unknown key `{key}` in an event condition (expected one of: {})", expected.join(", ")),
                    );
                }
            }
        }
        if let (Some(within), Some(older_than)) = (within, older_than) {
            if within.seconds() <= older_than.seconds() {
                self.r.error(
                    older_than_pos,
                    format!("older_than ({older_than}) must be shorter than within ({within}), or no event can match"),
                );
            }
        }
        if self.r.errors != errors_before {
            return None;
        }
        let mut condition = EventCondition {
            event_type: event_type?,
            filters,
            within,
            older_than,
            follow,
            aggregate: match aggregate_key {
                None => Aggregate::at_least_one(),
                Some(_) => aggregate?,
            },
            tally: None,
        };
        condition.tally = crate::tally::tally_key(&condition);
        Some(condition)
    }

    fn filters(&mut self, node: &Node) -> Option<Vec<PropertyFilter>> {
        let entries = self.r.entries(node, "a map of property: value or property: {comparator: value}")?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, key_node, value) in entries {
            if key.is_empty() || key.split('.').any(str::is_empty) {
                self.r.error(key_node.pos, format!("invalid property name {:?}: empty path segment", shorten(key)));
                continue;
            }
            let comparators = match &value.kind {
                NodeKind::Map(_) => self.comparator_map(value, ComparatorContext::Value, &[]),
                NodeKind::Seq(_) | NodeKind::Null => {
                    self.r.error(value.pos, format!("expected a value or a map of comparators, got {} (use `in:` for a list of values, `exists: false` for absence)", value.kind.describe()));
                    None
                }
                _ => scalar_value(value).map(|v| vec![Comparator::Eq(v)]),
            };
            if let Some(comparators) = comparators {
                out.push(PropertyFilter { path: FieldPath::new(key), comparators });
            }
        }
        Some(out)
    }

    /// A map of comparators (all must hold). `extra` keys are left to the caller.
    fn comparator_map(&mut self, node: &Node, context: ComparatorContext, extra: &[&str]) -> Option<Vec<Comparator>> {
        let entries = self.r.entries(node, "a map of comparators")?;
        let allowed: &[&str] = match context {
            ComparatorContext::Value => &COMPARATOR_KEYS,
            ComparatorContext::Aggregate => &["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte"],
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (key, key_node, value) in entries {
            if extra.contains(&key) {
                continue;
            }
            if !allowed.contains(&key) {
                let mut expected: Vec<&str> = extra.to_vec();
                expected.extend(allowed);
                self.r.error(key_node.pos, format!("unknown key `{key}` (expected one of: {})", expected.join(", ")));
                ok = false;
                continue;
            }
            match self.comparator(key, value, context) {
                Some(comparator) => out.push(comparator),
                None => ok = false,
            }
        }
        if out.is_empty() && ok {
            self.r.error(node.pos, format!("expected at least one comparator: {}", allowed.join(", ")));
            return None;
        }
        ok.then_some(out)
    }

    fn comparator(&mut self, key: &str, node: &Node, context: ComparatorContext) -> Option<Comparator> {
        let numeric = context == ComparatorContext::Aggregate;
        let operand = |parser: &mut Self, node: &Node, ordered: bool| -> Option<Value> {
            let value = scalar_value(node);
            let ok = match &value {
                Some(Value::Number(_)) => true,
                Some(Value::String(_)) => !numeric,
                Some(Value::Bool(_)) => !numeric && !ordered,
                _ => false,
            };
            if ok {
                value
            } else {
                let expected = match (numeric, ordered) {
                    (true, _) => "a number",
                    (false, true) => "a number or a string",
                    (false, false) => "a string, a number or a boolean",
                };
                parser.r.wrong_type(node, expected);
                None
            }
        };
        let list = |parser: &mut Self, node: &Node| -> Option<Vec<Value>> {
            let NodeKind::Seq(items) = &node.kind else {
                parser.r.wrong_type(node, "a list of values");
                return None;
            };
            let values: Vec<Option<Value>> = items.iter().map(|item| operand(parser, item, false)).collect();
            values.into_iter().collect()
        };
        Some(match key {
            "eq" => Comparator::Eq(operand(self, node, false)?),
            "ne" => Comparator::Ne(operand(self, node, false)?),
            "in" => Comparator::In(list(self, node)?),
            "not_in" => Comparator::NotIn(list(self, node)?),
            "gt" => Comparator::Gt(operand(self, node, true)?),
            "gte" => Comparator::Gte(operand(self, node, true)?),
            "lt" => Comparator::Lt(operand(self, node, true)?),
            "lte" => Comparator::Lte(operand(self, node, true)?),
            "contains" => Comparator::Contains(operand(self, node, false)?),
            "exists" => Comparator::Exists(self.boolean(node)?),
            "within" => Comparator::Within(self.duration(node)?),
            _ => Comparator::OlderThan(self.duration(node)?),
        })
    }

    fn aggregate(&mut self, key: &str, key_node: &Node, node: &Node) -> Option<Aggregate> {
        let needs_property = key != "count";
        let extra: &[&str] = if needs_property { &["property"] } else { &[] };
        let property = if needs_property {
            match &node.kind {
                NodeKind::Map(pairs) => {
                    let found = pairs.iter().find(|(k, _)| matches!(&k.kind, NodeKind::Str(s) if s == "property"));
                    match found {
                        Some((_, value)) => self.field_path(value, "property"),
                        None => {
                            self.r.error(
                                key_node.pos,
                                format!("`{key}` needs `property: NAME` (the numeric event property)"),
                            );
                            None
                        }
                    }
                }
                _ => None,
            }
        } else {
            None
        };
        let comparators = self.comparator_map(node, ComparatorContext::Aggregate, extra)?;
        let kind = match key {
            "count" => AggregateKind::Count,
            "sum" => AggregateKind::Sum(property?),
            "avg" => AggregateKind::Avg(property?),
            "min" => AggregateKind::Min(property?),
            _ => AggregateKind::Max(property?),
        };
        Some(Aggregate { kind, comparators })
    }

    fn follow_up(&mut self, node: &Node, negated: bool) -> Option<FollowUp> {
        let errors_before = self.r.errors;
        let entries = self.r.entries(node, "a map with event and optional where, within, match")?;
        let mut event_type = None;
        let mut filters = Vec::new();
        let mut within = None;
        let mut match_properties = Vec::new();
        for &(key, key_node, value) in &entries {
            match key {
                "event" => event_type = self.event_type(value),
                "where" => filters = self.filters(value).unwrap_or_default(),
                "within" => within = self.duration(value),
                "match" => match &value.kind {
                    NodeKind::Seq(items) => {
                        match_properties = items.iter().filter_map(|item| self.field_path(item, "property")).collect();
                    }
                    _ => self.r.wrong_type(value, "a list of property names"),
                },
                _ => self
                    .r
                    .error(key_node.pos, format!("unknown key `{key}` (expected one of: event, where, within, match)")),
            }
        }
        if !has(&entries, "event") {
            self.r.error(node.pos, "missing required key `event`");
        }
        if self.r.errors != errors_before {
            return None;
        }
        Some(FollowUp { negated, event_type: event_type?, filters, within, match_properties })
    }
}

fn has(entries: &Entries<'_>, key: &str) -> bool {
    entries.iter().any(|(k, _, _)| *k == key)
}

/// A YAML scalar as JSON; `None` for null and collections.
fn scalar_value(node: &Node) -> Option<Value> {
    match &node.kind {
        NodeKind::Bool(b) => Some(Value::Bool(*b)),
        NodeKind::Int(i) => Some(Value::from(*i)),
        NodeKind::UInt(u) => Some(Value::from(*u)),
        NodeKind::Float(f) => Number::from_f64(*f).map(Value::Number),
        NodeKind::Str(s) => Some(Value::String(s.clone())),
        NodeKind::Null | NodeKind::Seq(_) | NodeKind::Map(_) => None,
    }
}
