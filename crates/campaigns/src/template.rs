//! Flex templates (Handlebars): JSON escaping, the render context and the
//! helpers `yen`, `date` and `track`.
//!
//! A Flex template renders the message's `contents` JSON. Every `{{value}}`
//! is escaped as the inside of a JSON string (quotes, backslashes, control
//! characters, newlines), so member data can never break the JSON; put
//! values inside quotes: `"text": "{{member.name}}さん"`. Triple braces
//! (`{{{…}}}`, `{{&…}}`) and partials are refused at load. `alt_text` is a
//! template too, rendered without escaping (it becomes a JSON string through
//! serde).
//!
//! The context: `member` (attributes plus `member_id`), `line_user_id`,
//! `event` (`type`, `occurred_at`, `properties`), `campaign` (`id`, `name`)
//! and `now` (RFC 3339 in the configured timezone). A missing value renders
//! as nothing (strict mode is off), but a helper whose argument is missing
//! fails the render.

use crate::link::{LinkKeys, LinkPayload};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext as HbRenderContext, RenderError as HbRenderError,
    RenderErrorReason, ScopedJson,
};
use renkei_segments::calendar::parse_time;
use renkei_segments::diagnostic::shorten;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::sync::Arc;

/// Where the per-render settings the helpers need live in the context.
const INTERNAL: &str = "_renkei";
/// The `date` helper's format when none is given.
pub const DEFAULT_DATE_FORMAT: &str = "%Y/%m/%d %H:%M";

/// Everything a render may use about one recipient and one moment.
#[derive(Debug, Clone, Copy)]
pub struct RenderContext<'a> {
    pub member_id: Option<&'a str>,
    /// The member's attributes.
    pub member: Option<&'a Map<String, Value>>,
    pub line_user_id: Option<&'a str>,
    /// The delivery's trigger key (`entered:<id>`, `schedule:<time>`,
    /// `event:<id>`), sealed into tracked links.
    pub trigger_key: Option<&'a str>,
    /// The trigger event: `{"type","occurred_at","properties":{..}}`.
    pub event: Option<&'a Value>,
    pub now: DateTime<Utc>,
    pub timezone: Tz,
    /// How users reach this server (for tracked links), e.g. `https://renkei.example`.
    pub public_base_url: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The template failed to render (e.g. a helper's argument is missing).
    #[error("template `{template}`: {message}")]
    Template { template: String, message: String },
    /// The Flex template rendered something that is not JSON.
    #[error("template `{template}` rendered invalid JSON: {message}")]
    InvalidJson { template: String, message: String },
    /// The messages break one of LINE's limits (altText length, bubble size…).
    #[error("message over LINE's limits: {0}")]
    Limits(String),
}

/// Escapes `text` as the inside of a JSON string, exactly as serde_json does.
pub fn json_escape(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default().to_string()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// `¥1,234`: whole yen (JPY has no minor unit; fractions round half away
/// from zero), thousands separated, a minus sign before the yen sign.
pub fn format_yen(amount: f64) -> String {
    let rounded = amount.round();
    let digits = format!("{:.0}", rounded.abs());
    let sign = if rounded < 0.0 { "-" } else { "" };
    format!("{sign}¥{}", group_thousands(&digits))
}

fn format_yen_integer(amount: i128) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    format!("{sign}¥{}", group_thousands(&amount.unsigned_abs().to_string()))
}

fn group_thousands(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The tracked-link URL: `<base>/t/<token>` (see [`crate::link`]).
pub fn tracked_url(public_base_url: &str, token: &str) -> String {
    format!("{}/t/{token}", public_base_url.trim_end_matches('/'))
}

/// The URL of a member's code image: `<base>/member-code/<token>` (a PNG
/// renkei serves; see [`crate::link::MemberCode`]).
pub fn member_code_url(public_base_url: &str, token: &str) -> String {
    format!("{}/member-code/{token}", public_base_url.trim_end_matches('/'))
}

/// The JSON context a template sees.
pub(crate) fn context_json(campaign_id: &str, campaign_name: &str, ctx: &RenderContext<'_>, sample: bool) -> Value {
    let mut member = ctx.member.cloned().unwrap_or_default();
    if let Some(member_id) = ctx.member_id {
        member.insert("member_id".into(), Value::String(member_id.to_string()));
    }
    json!({
        "member": member,
        "line_user_id": ctx.line_user_id,
        "event": ctx.event,
        "campaign": {"id": campaign_id, "name": campaign_name},
        "now": ctx.now.with_timezone(&ctx.timezone).to_rfc3339(),
        INTERNAL: {
            "public_base_url": ctx.public_base_url,
            "trigger_key": ctx.trigger_key,
            "timezone": ctx.timezone.name(),
            "sample": sample,
        },
    })
}

/// A new registry with the helpers; `escape` JSON-escapes `{{values}}`;
/// `track` seals links with `keys` (without keys it renders only in the
/// load-time sample check).
pub(crate) fn registry(escape: bool, keys: Option<Arc<LinkKeys>>) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(false);
    if escape {
        hb.register_escape_fn(json_escape);
    } else {
        hb.register_escape_fn(handlebars::no_escape);
    }
    hb.register_helper("yen", Box::new(Yen));
    hb.register_helper("date", Box::new(DateHelper));
    hb.register_helper("track", track_helper(keys));
    hb
}

fn fail(message: String) -> HbRenderError {
    RenderErrorReason::Other(message).into()
}

fn internal<'c>(ctx: &'c Context, key: &str) -> Option<&'c Value> {
    ctx.data().get(INTERNAL).and_then(|v| v.get(key))
}

/// In the load-time check with sample data, a missing argument gets a
/// stand-in value instead of failing.
fn is_sample(ctx: &Context) -> bool {
    internal(ctx, "sample").and_then(Value::as_bool).unwrap_or(false)
}

/// The value of argument `index`: an error when it is not given at all, or
/// when its value is missing or null (outside the load-time sample check,
/// where `None` is returned).
fn argument<'v>(
    helper: &'v Helper<'_>,
    name: &str,
    index: usize,
    ctx: &Context,
) -> Result<Option<&'v Value>, HbRenderError> {
    let Some(param) = helper.param(index) else {
        return Err(fail(format!("`{name}` needs an argument")));
    };
    let value = param.value();
    if param.is_value_missing() || value.is_null() {
        if is_sample(ctx) {
            return Ok(None);
        }
        let what = param.relative_path().map(|p| format!(" `{p}`")).unwrap_or_default();
        return Err(fail(format!("`{name}`: argument{what} is missing")));
    }
    Ok(Some(value))
}

struct Yen;

impl HelperDef for Yen {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut HbRenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, HbRenderError> {
        let text = match argument(h, "yen", 0, ctx)? {
            None => format_yen_integer(1234),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => format_yen_integer(i128::from(i)),
                (None, Some(u), _) => format_yen_integer(i128::from(u)),
                (None, None, Some(f)) => format_yen(f),
                _ => return Err(fail("`yen`: not a number".into())),
            },
            Some(Value::String(s)) => {
                let trimmed = s.trim();
                if let Ok(i) = trimmed.parse::<i128>() {
                    format_yen_integer(i)
                } else {
                    match trimmed.parse::<f64>() {
                        Ok(f) if f.is_finite() => format_yen(f),
                        _ => return Err(fail(format!("`yen`: {:?} is not a number", shorten(s)))),
                    }
                }
            }
            Some(other) => return Err(fail(format!("`yen`: expected a number, got {}", kind(other)))),
        };
        Ok(ScopedJson::Derived(Value::String(text)))
    }
}

struct DateHelper;

impl HelperDef for DateHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut HbRenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, HbRenderError> {
        let tz: Tz = internal(ctx, "timezone").and_then(Value::as_str).and_then(|t| t.parse().ok()).unwrap_or(Tz::UTC);
        let format = match h.param(1) {
            None => DEFAULT_DATE_FORMAT,
            Some(param) => param.value().as_str().ok_or_else(|| fail("`date`: the format must be a string".into()))?,
        };
        let at = match argument(h, "date", 0, ctx)? {
            None => parse_time("2026-01-01T09:00:00Z", Tz::UTC).unwrap_or_default(),
            Some(Value::String(s)) => parse_time(s, tz).ok_or_else(|| {
                fail(format!("`date`: {:?} is not a time (expected RFC 3339 or YYYY-MM-DD)", shorten(s)))
            })?,
            Some(other) => return Err(fail(format!("`date`: expected a time string, got {}", kind(other)))),
        };
        let mut out = String::new();
        // Writing (rather than to_string) turns a bad format into an error instead of a panic.
        write!(out, "{}", at.with_timezone(&tz).format(format))
            .map_err(|_| fail(format!("`date`: invalid format {:?}", shorten(format))))?;
        Ok(ScopedJson::Derived(Value::String(out)))
    }
}

/// The `track` helper, sealing with `keys`.
pub(crate) fn track_helper(keys: Option<Arc<LinkKeys>>) -> Box<dyn HelperDef + Send + Sync> {
    Box::new(Track { keys })
}

/// Whether a template's text calls `track` in some `{{…}}` tag (as a helper
/// or a subexpression `(track …)`; `{{member.track}}` does not count).
pub(crate) fn mentions_track(source: &str) -> bool {
    source.split("{{").skip(1).any(|tag| {
        let tag = tag.split("}}").next().unwrap_or_default();
        tag.split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '{' | '~' | '#')).any(|word| word == "track")
    })
}

/// What of a recipient's context a template reads, so renders that would
/// come out the same can be shared: a template that reads no member data
/// renders once for a whole cron fire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reads {
    pub member: bool,
    pub line_user_id: bool,
    pub event: bool,
    pub now: bool,
    /// `track`: its sealed links name the recipient and the trigger instance.
    pub track: bool,
    /// Something this reading cannot follow (`this`, `../`, a name not at
    /// the root): treat every render as its own.
    pub everything: bool,
}

impl Reads {
    pub(crate) fn union(self, other: Reads) -> Reads {
        Reads {
            member: self.member || other.member,
            line_user_id: self.line_user_id || other.line_user_id,
            event: self.event || other.event,
            now: self.now || other.now,
            track: self.track || other.track,
            everything: self.everything || other.everything,
        }
    }
}

/// Names a tag may use that read nothing of the recipient: the helpers,
/// Handlebars' own, `else`, and the campaign (the same for every recipient).
const SHARED_NAMES: [&str; 20] = [
    "campaign", "yen", "date", "if", "unless", "each", "with", "lookup", "else", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len", "log",
];

/// What `source` (a Flex template or an alt_text) reads, by its tags' words.
/// Conservative: whatever it cannot place makes it read `everything`.
pub(crate) fn template_reads(source: &str) -> Reads {
    let mut reads = Reads::default();
    for tag in source.split("{{").skip(1) {
        let tag = tag.split("}}").next().unwrap_or_default();
        let tag = tag.trim_start_matches(['{', '~', '#', '/', '^', '&']).trim_end_matches(['}', '~']);
        if tag.starts_with('!') {
            continue; // a comment
        }
        if tag.starts_with(['>', '*', '{']) || tag.contains("..") {
            reads.everything = true;
            continue;
        }
        for word in words(tag) {
            let root = word.trim_start_matches("@root.").split(['.', '/', '[']).next().unwrap_or_default();
            match root {
                "" | "true" | "false" | "null" | "undefined" => {}
                _ if root.starts_with('@') || root.starts_with(|c: char| c.is_ascii_digit() || c == '-') => {}
                "member" => reads.member = true,
                "line_user_id" => reads.line_user_id = true,
                "event" => reads.event = true,
                "now" => reads.now = true,
                "track" => reads.track = true,
                name if SHARED_NAMES.contains(&name) => {}
                _ => reads.everything = true,
            }
        }
    }
    reads
}

/// A tag's words outside string literals: paths, helper names, the values
/// of `key=value` (not the keys).
fn words(tag: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = tag;
    while !rest.is_empty() {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '(' | ')'));
        if let Some(quote) = rest.chars().next().filter(|c| matches!(c, '"' | '\'')) {
            rest = rest[1..].split_once(quote).map_or("", |(_, after)| after);
            continue;
        }
        let end = rest.find(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '"' | '\'')).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        let word = word.split_once('=').map_or(word, |(_, value)| value);
        if !word.is_empty() {
            out.push(word);
        }
        rest = after;
    }
    out
}

struct Track {
    keys: Option<Arc<LinkKeys>>,
}

impl HelperDef for Track {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut HbRenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, HbRenderError> {
        let target = match argument(h, "track", 0, ctx)? {
            None => "https://example.com/",
            Some(Value::String(s)) => s.as_str(),
            Some(other) => return Err(fail(format!("`track`: expected a URL string, got {}", kind(other)))),
        };
        if !(target.starts_with("https://") || target.starts_with("http://")) {
            return Err(fail(format!("`track`: {:?} is not an http(s) URL", shorten(target))));
        }
        let base = internal(ctx, "public_base_url").and_then(Value::as_str).unwrap_or_default();
        let token = match &self.keys {
            Some(keys) => keys.seal(&link_payload(ctx, target)),
            None if is_sample(ctx) => "sample-token".to_string(),
            None => return Err(fail("`track` needs a link key (`server.link_keys`)".into())),
        };
        Ok(ScopedJson::Derived(Value::String(tracked_url(base, &token))))
    }
}

/// What a `track` link of this render stands for.
fn link_payload(ctx: &Context, target: &str) -> LinkPayload {
    let data = ctx.data();
    let text = |value: Option<&Value>| value.and_then(Value::as_str).unwrap_or_default().to_string();
    LinkPayload {
        campaign_id: text(data.pointer("/campaign/id")),
        trigger_key: text(internal(ctx, "trigger_key")),
        line_user_id: text(data.get("line_user_id")),
        target: target.to_string(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Constructs that would bypass JSON escaping or pull in other templates,
/// with their byte offsets.
pub(crate) fn forbidden_constructs(source: &str) -> Vec<(usize, &'static str)> {
    let mut out = Vec::new();
    let bytes = source.as_bytes();
    let mut i = 0;
    while let Some(found) = source.get(i..).and_then(|rest| rest.find("{{")) {
        let at = i + found;
        // `\{{` is a literal in Handlebars.
        let escaped = at > 0 && bytes.get(at - 1) == Some(&b'\\');
        let mut j = at + 2;
        if bytes.get(j) == Some(&b'~') {
            j += 1;
        }
        if !escaped {
            match bytes.get(j) {
                Some(b'{') => {
                    out.push((at, "triple braces `{{{…}}}` would insert a value without JSON escaping; use `{{…}}`"))
                }
                Some(b'&') => out.push((at, "`{{&…}}` would insert a value without JSON escaping; use `{{…}}`")),
                Some(b'>') => out.push((at, "partials (`{{>…}}`) are not supported in Flex templates")),
                Some(b'#') if bytes.get(j + 1) == Some(&b'>') => {
                    out.push((at, "partials (`{{#>…}}`) are not supported in Flex templates"))
                }
                _ => {}
            }
        }
        i = if bytes.get(j) == Some(&b'{') { j + 1 } else { at + 2 };
    }
    out
}

/// The block (`{{#name …}}` or `{{^name …}}`) still open at the end of
/// `source`, the innermost one, with its byte offset: the grammar's own
/// error points at the end of the file.
pub(crate) fn unclosed_block(source: &str) -> Option<(usize, String)> {
    let mut open: Vec<(usize, char, &str)> = Vec::new();
    let mut i = 0;
    while let Some(found) = source.get(i..).and_then(|rest| rest.find("{{")) {
        let at = i + found;
        let tag = source[at + 2..].trim_start_matches('~');
        if tag.starts_with('!') {
            let close = if tag.starts_with("!--") { "--}}" } else { "}}" };
            i = source[at..].find(close).map_or(source.len(), |end| at + end + close.len());
            continue;
        }
        i = at + 2;
        if at > 0 && source.as_bytes()[at - 1] == b'\\' {
            continue;
        }
        let mut chars = tag.chars();
        match (chars.next(), block_name(chars.as_str())) {
            (Some(sigil @ ('#' | '^')), name) if !name.is_empty() => open.push((at, sigil, name)),
            (Some('/'), name) => match open.pop() {
                Some((_, _, opened)) if opened == name => {}
                _ => return None, // a mismatch: the grammar's own error names both
            },
            _ => {}
        }
    }
    let (at, sigil, name) = open.pop()?;
    Some((
        at,
        format!("`{{{{{sigil}{name}}}}}` opened here is never closed; add `{{{{/{name}}}}}` where the block ends"),
    ))
}

/// The helper name at the start of a tag's text (`if` of `if member.gold}}`).
fn block_name(tag: &str) -> &str {
    let tag = tag.trim_start_matches('*');
    tag.split(|c: char| c.is_whitespace() || c == '}' || c == '~').next().unwrap_or("")
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(source: &str, offset: usize) -> (u32, u32) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (u32::try_from(line).unwrap_or(u32::MAX), u32::try_from(col).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_read_what_their_tags_name() {
        let none = template_reads(r#"{"type":"text","text":"週末セール {{campaign.name}} {{! a note }}"}"#);
        assert_eq!(none, Reads::default(), "nothing of the recipient");
        let member =
            template_reads(r#"{"text":"{{member.name}}さん {{yen member.points}} {{#if member.rank}}x{{/if}}"}"#);
        assert_eq!(member, Reads { member: true, ..Reads::default() });
        let dated = template_reads(r#"{{date now format="%Y年"}} {{#each event.properties}}{{@index}}{{/each}}"#);
        assert_eq!(dated, Reads { now: true, event: true, ..Reads::default() });
        let tracked = template_reads(r#"{"uri":"{{track "https://example.com/member" }}"}"#);
        assert_eq!(tracked, Reads { track: true, ..Reads::default() }, "words in strings are not read");
        for unfollowable in
            ["{{this}}", "{{../member}}", "{{name}}", "{{#each member.items}}{{sku}}{{/each}}", "{{> p}}"]
        {
            assert!(template_reads(unfollowable).everything, "{unfollowable}");
        }
        assert!(template_reads("{{@root.line_user_id}}").line_user_id);
    }

    #[test]
    fn yen_formats_integers_negatives_and_fractions() {
        assert_eq!(format_yen_integer(3200), "¥3,200");
        assert_eq!(format_yen_integer(0), "¥0");
        assert_eq!(format_yen_integer(999), "¥999");
        assert_eq!(format_yen_integer(1_000), "¥1,000");
        assert_eq!(format_yen_integer(-1_234_567), "-¥1,234,567");
        assert_eq!(format_yen(1234.5), "¥1,235");
        assert_eq!(format_yen(-0.4), "¥0");
        assert_eq!(format_yen(-1500.6), "-¥1,501");
        assert_eq!(format_yen(1e21), "¥1,000,000,000,000,000,000,000");
    }

    #[test]
    fn json_escape_matches_serde_json() {
        for text in ["plain", "\"q\"", "back\\slash", "line\nbreak\r\t", "\u{0}\u{1f}", "絵文字🎉", "<b>&amp;</b>"]
        {
            let escaped = json_escape(text);
            let parsed: String = serde_json::from_str(&format!("\"{escaped}\"")).unwrap_or_default();
            assert_eq!(parsed, text);
        }
        assert_eq!(json_escape("a\"b"), "a\\\"b");
    }

    #[test]
    fn track_is_found_in_tags_only() {
        assert!(mentions_track(r#"{"uri": "{{track "https://a.example/"}}"}"#));
        assert!(mentions_track("{{#if x}}{{~track (concat a b)~}}{{/if}}"));
        assert!(mentions_track("{{yen (track u)}}"));
        assert!(!mentions_track("track {{member.track}} {{tracker}}"));
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved() {
        assert_eq!(
            percent_encode("https://shop.example/cart?a=1&b=日"),
            "https%3A%2F%2Fshop.example%2Fcart%3Fa%3D1%26b%3D%E6%97%A5"
        );
        assert_eq!(percent_encode("A-z_0.9~"), "A-z_0.9~");
    }

    #[test]
    fn an_unclosed_block_is_found_where_it_opens() {
        let source = "{\n  \"a\": {{#if member.gold}}1{{else}}2,\n  {{!-- {{#each x}} --}}\"b\": 3\n}";
        let (offset, message) = unclosed_block(source).expect("unclosed");
        assert_eq!(line_col(source, offset), (2, 8));
        assert!(message.contains("`{{#if}}` opened here is never closed") && message.contains("{{/if}}"), "{message}");
        assert_eq!(unclosed_block("{{#if a}}{{#each b}}{{/each}}{{/if}} \\{{#if c}}"), None);
        assert_eq!(unclosed_block("{{#if a}}{{/each}}"), None, "a mismatch is left to the grammar");
        assert_eq!(unclosed_block("{{~^unless a~}}x").map(|(o, _)| o), Some(0));
    }

    #[test]
    fn forbidden_constructs_are_found_with_positions() {
        let source =
            "{\n  \"a\": \"{{{member.name}}}\",\n  \"b\": \"{{> other}}\", \"c\": \"{{x}}\", \"d\": \"\\{{{y}}}\"\n}";
        let found: Vec<(u32, u32)> =
            forbidden_constructs(source).into_iter().map(|(o, _)| line_col(source, o)).collect();
        assert_eq!(found, vec![(2, 9), (3, 9)]);
        assert!(forbidden_constructs("{{~{x}}} {{&y}} {{#> layout}}{{/layout}}").len() == 3);
    }
}
