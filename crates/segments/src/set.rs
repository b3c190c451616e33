//! A validated set of segments: unique ids, known references, no cycles,
//! kept in dependency order (a segment comes after every segment it uses).

use crate::ast::{AggregateKind, Condition, FieldPath, Segment};
use crate::diagnostic::{DeclaredIds, Diagnostic};
use crate::parse::{ParsedFile, parse_file};
use crate::yaml::Pos;
use renkei_core::SpanDuration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentSet {
    /// Dependency order: every segment after the segments it references.
    pub(crate) segments: Vec<Segment>,
    /// id → index in `segments`.
    pub(crate) index: BTreeMap<String, usize>,
    /// [`SegmentSet::referenced_event_types`], for [`crate::eval::TypedEvents`].
    pub(crate) event_types: Vec<String>,
}

impl SegmentSet {
    /// Loads every `*.yaml` / `*.yml` file of `dir` (not recursive). Returns
    /// every problem found, sorted by file and position, and nothing else if
    /// there is any.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<SegmentSet, Vec<Diagnostic>> {
        let (sources, mut diagnostics) = crate::files::read_yaml_dir(dir.as_ref(), crate::files::MissingDir::Error)?;
        match Self::from_sources(sources) {
            Ok(set) if diagnostics.is_empty() => Ok(set),
            Ok(_) => Err(diagnostics),
            Err(more) => {
                diagnostics.extend(more);
                diagnostics.sort();
                Err(diagnostics)
            }
        }
    }

    /// One file's text as a whole set (handy in tests and `renkei check`).
    pub fn parse_str(file_name: impl Into<PathBuf>, text: &str) -> Result<SegmentSet, Vec<Diagnostic>> {
        Self::from_sources([(file_name.into(), text.to_string())])
    }

    /// Several files' texts, as if they were one directory.
    pub fn from_sources(sources: impl IntoIterator<Item = (PathBuf, String)>) -> Result<SegmentSet, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let mut segments: Vec<Segment> = Vec::new();
        // Every id a file declares, even an invalid file, so references to it are not also reported.
        let mut declared = DeclaredIds::default();
        for (path, text) in sources {
            let ParsedFile { id, segment } = parse_file(&path, &text, &mut diagnostics);
            if let Some((id, pos)) = id
                && declared.declare("segment", id, &path, pos, &mut diagnostics)
            {
                segments.extend(segment);
            }
        }
        for segment in &segments {
            for (reference, pos) in segment.rule.segment_references() {
                if !declared.contains(reference) {
                    diagnostics.push(Diagnostic::new(&segment.file, pos, format!("unknown segment `{reference}`")));
                }
            }
        }
        let order = dependency_order(&segments);
        if order.len() < segments.len() {
            diagnostics.extend(cycle_diagnostics(&segments, &order));
        }
        if !diagnostics.is_empty() {
            diagnostics.sort();
            diagnostics.dedup();
            return Err(diagnostics);
        }
        let mut slots: Vec<Option<Segment>> = segments.into_iter().map(Some).collect();
        let ordered: Vec<Segment> = order.iter().filter_map(|&i| slots.get_mut(i).and_then(Option::take)).collect();
        let index = ordered.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        let mut set = SegmentSet { segments: ordered, index, event_types: Vec::new() };
        set.event_types = set.referenced_event_types().into_iter().collect();
        Ok(set)
    }

    /// All segment ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.index.get(id).and_then(|&i| self.segments.get(i))
    }

    /// Segments in dependency order: each after every segment it references.
    pub fn in_dependency_order(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter()
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// What the rules say, as 16 hex digits: equal sets (whatever their
    /// files' names, layout, comments and display names) have equal
    /// fingerprints, and any change of a rule, id or reference changes it.
    /// Stable across builds of the same version (it hashes the parsed rules).
    pub fn fingerprint(&self) -> String {
        let text: String = self.segments.iter().map(|s| format!("{}={:?}\n", s.id, s.rule)).collect();
        format!("{:016x}", crate::tally::fnv1a(text.as_bytes()))
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Each segment's own fingerprint (id → 16 hex digits), hashed as
    /// [`SegmentSet::fingerprint`] hashes the set: it changes with the
    /// segment's rule, not with the rules of the segments it references
    /// (those reach it through [`SegmentSet::changes_since`]).
    pub fn segment_fingerprints(&self) -> BTreeMap<String, String> {
        self.segments.iter().map(|s| (s.id.clone(), segment_fingerprint(s))).collect()
    }

    /// What must be recomputed given the fingerprints of the last finished
    /// recompute (`previous`, as [`SegmentSet::segment_fingerprints`] gave
    /// them): the segments new or changed, every segment that references one
    /// of them (directly or through others), and the ids gone since.
    pub fn changes_since(&self, previous: &BTreeMap<String, String>) -> SegmentChanges {
        let changed: Vec<&str> = self
            .segments
            .iter()
            .filter(|s| previous.get(&s.id) != Some(&segment_fingerprint(s)))
            .map(|s| s.id.as_str())
            .collect();
        let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for segment in &self.segments {
            for (reference, _) in segment.rule.segment_references() {
                dependents.entry(reference).or_default().push(segment.id.as_str());
            }
        }
        let mut recompute: BTreeSet<String> = changed.iter().map(|id| id.to_string()).collect();
        let mut queue: VecDeque<&str> = changed.into_iter().collect();
        while let Some(current) = queue.pop_front() {
            for &dependent in dependents.get(current).into_iter().flatten() {
                if recompute.insert(dependent.to_string()) {
                    queue.push_back(dependent);
                }
            }
        }
        let removed = previous.keys().filter(|id| !self.index.contains_key(*id)).cloned().collect();
        SegmentChanges { recompute, removed }
    }

    /// The segments of `ids` (unknown ids are skipped) and every segment
    /// they reference, directly or through others, in dependency order: what
    /// evaluating just those segments needs.
    pub fn with_dependencies<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> SegmentSet {
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for id in ids.into_iter().filter(|id| self.index.contains_key(*id)) {
            keep.extend(self.dependencies(id));
            keep.insert(id.to_string());
        }
        // Filtering keeps the order, and a kept segment's references are kept too.
        let segments: Vec<Segment> = self.segments.iter().filter(|s| keep.contains(&s.id)).cloned().collect();
        let index = segments.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        let mut set = SegmentSet { segments, index, event_types: Vec::new() };
        set.event_types = set.referenced_event_types().into_iter().collect();
        set
    }

    /// Every event type some segment looks at (directly or as a follow-up),
    /// so that callers load only the events that matter.
    pub fn referenced_event_types(&self) -> BTreeSet<String> {
        let mut types = BTreeSet::new();
        for segment in &self.segments {
            segment.rule.visit(&mut |condition| {
                if let Condition::Event(event) = condition {
                    types.insert(event.event_type.as_str().to_string());
                    if let Some(follow) = &event.follow {
                        types.insert(follow.event_type.as_str().to_string());
                    }
                }
            });
        }
        types
    }

    /// For every event type some segment looks at, the top-level property
    /// keys some segment reads on events of that type (`where` filters,
    /// aggregated properties, `match`ed properties, on the first event or the
    /// follow-up). A type with an empty set is only counted or timed, never
    /// looked into, so its properties need not be loaded at all; keys not
    /// listed are never read. Keys of the returned map are exactly
    /// [`SegmentSet::referenced_event_types`].
    pub fn property_reads(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut reads: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let top = |path: &FieldPath| path.parts.first().cloned().unwrap_or_default();
        for segment in &self.segments {
            segment.rule.visit(&mut |condition| {
                let Condition::Event(event) = condition else { return };
                let own = reads.entry(event.event_type.as_str().to_string()).or_default();
                own.extend(event.filters.iter().map(|f| top(&f.path)));
                match &event.aggregate.kind {
                    AggregateKind::Count => {}
                    AggregateKind::Sum(path)
                    | AggregateKind::Avg(path)
                    | AggregateKind::Min(path)
                    | AggregateKind::Max(path) => {
                        own.insert(top(path));
                    }
                }
                if let Some(follow) = &event.follow {
                    own.extend(follow.match_properties.iter().map(top));
                    let next = reads.entry(follow.event_type.as_str().to_string()).or_default();
                    next.extend(follow.match_properties.iter().map(top));
                    next.extend(follow.filters.iter().map(|f| top(&f.path)));
                }
            });
        }
        reads
    }

    /// For every event type some segment looks at, how far back its events
    /// still matter: `Some(d)` when every condition on the type has a window
    /// `within` of at most `d` (and every follow-up of the type follows such a
    /// first event), `None` when some condition reads the type's whole
    /// history. An event at or before `now - d` is outside every window at
    /// `now` and at every later instant: it can change no answer from `now`
    /// on (the next-change times it suggests are never real changes), so it
    /// need not be loaded. Keys are exactly
    /// [`SegmentSet::referenced_event_types`].
    pub fn event_horizons(&self) -> BTreeMap<String, Option<SpanDuration>> {
        self.horizons(&|_| false)
    }

    /// Every event type some condition with a tally reads (see
    /// [`crate::tally`]): the types whose totals evaluation can use.
    pub fn totalled_types(&self) -> BTreeSet<String> {
        let mut types = BTreeSet::new();
        for segment in &self.segments {
            segment.rule.visit(&mut |condition| {
                if let Condition::Event(event) = condition
                    && event.tally.is_some()
                {
                    types.insert(event.event_type.as_str().to_string());
                }
            });
        }
        types
    }

    /// Like [`SegmentSet::event_horizons`] when the facts carry the totals
    /// of every tally ([`SegmentSet::tallied_conditions`]): conditions with a
    /// tally read no event (a zero horizon, when nothing else reads the
    /// type), so only windowed conditions set how far back events are needed.
    pub fn event_horizons_beside_totals(&self) -> BTreeMap<String, Option<SpanDuration>> {
        self.horizons(&|_| true)
    }

    /// [`SegmentSet::event_horizons_beside_totals`] when the facts carry only
    /// the tallies `loaded` says they do (by key).
    pub fn event_horizons_beside(&self, loaded: &dyn Fn(&str) -> bool) -> BTreeMap<String, Option<SpanDuration>> {
        self.horizons(loaded)
    }

    fn horizons(&self, loaded: &dyn Fn(&str) -> bool) -> BTreeMap<String, Option<SpanDuration>> {
        fn widen(slot: &mut Option<Option<SpanDuration>>, within: Option<SpanDuration>) {
            *slot = Some(match (*slot, within) {
                (None, within) => within,
                (Some(Some(a)), Some(b)) => Some(if b.seconds() > a.seconds() { b } else { a }),
                _ => None,
            });
        }
        let mut horizons: BTreeMap<String, Option<Option<SpanDuration>>> = BTreeMap::new();
        for segment in &self.segments {
            segment.rule.visit(&mut |condition| {
                let Condition::Event(event) = condition else { return };
                let tallied = event.tally.as_deref().is_some_and(loaded);
                let within = if tallied { Some(SpanDuration::from_seconds(0)) } else { event.within };
                // A follow-up counts only after a first event in the window.
                widen(horizons.entry(event.event_type.as_str().to_string()).or_default(), within);
                if let Some(follow) = &event.follow {
                    widen(horizons.entry(follow.event_type.as_str().to_string()).or_default(), event.within);
                }
            });
        }
        horizons.into_iter().map(|(t, h)| (t, h.flatten())).collect()
    }

    /// Ids of the segments `id` uses, directly or through others (sorted).
    pub fn dependencies(&self, id: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut queue: VecDeque<&str> = VecDeque::from([id]);
        while let Some(current) = queue.pop_front() {
            let Some(segment) = self.segment(current) else { continue };
            for (reference, _) in segment.rule.segment_references() {
                if found.insert(reference.to_string()) {
                    queue.push_back(reference);
                }
            }
        }
        found
    }
}

/// What a start must recompute (see [`SegmentSet::changes_since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentChanges {
    /// Segments new or changed, and every segment that references one of them.
    pub recompute: BTreeSet<String>,
    /// Ids of the last recompute that are no segment any more.
    pub removed: BTreeSet<String>,
}

impl SegmentChanges {
    /// Nothing to recompute and nothing removed.
    pub fn is_empty(&self) -> bool {
        self.recompute.is_empty() && self.removed.is_empty()
    }
}

fn segment_fingerprint(segment: &Segment) -> String {
    format!("{:016x}", crate::tally::fnv1a(format!("{}={:?}\n", segment.id, segment.rule).as_bytes()))
}

/// Kahn's algorithm over segment references; segments on or behind a cycle
/// are left out. Ties go by id so the order is stable.
fn dependency_order(segments: &[Segment]) -> Vec<usize> {
    let by_id: BTreeMap<&str, usize> = segments.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let mut missing_dependencies = vec![0usize; segments.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); segments.len()];
    for (i, segment) in segments.iter().enumerate() {
        let targets: BTreeSet<usize> =
            segment.rule.segment_references().iter().filter_map(|(r, _)| by_id.get(r).copied()).collect();
        missing_dependencies[i] = targets.len();
        for target in targets {
            dependents[target].push(i);
        }
    }
    let mut ready: BTreeSet<(&str, usize)> =
        (0..segments.len()).filter(|&i| missing_dependencies[i] == 0).map(|i| (segments[i].id.as_str(), i)).collect();
    let mut order = Vec::with_capacity(segments.len());
    while let Some(next) = ready.pop_first() {
        let i = next.1;
        order.push(i);
        for &dependent in &dependents[i] {
            missing_dependencies[dependent] -= 1;
            if missing_dependencies[dependent] == 0 {
                ready.insert((segments[dependent].id.as_str(), dependent));
            }
        }
    }
    order
}

/// One diagnostic per segment that lies on a reference cycle, at the
/// reference that leads back to it, naming the whole loop.
fn cycle_diagnostics(segments: &[Segment], ordered: &[usize]) -> Vec<Diagnostic> {
    let done: BTreeSet<usize> = ordered.iter().copied().collect();
    let by_id: BTreeMap<&str, usize> = segments.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let references = |i: usize| -> Vec<(usize, Pos)> {
        segments[i].rule.segment_references().into_iter().filter_map(|(r, p)| by_id.get(r).map(|&t| (t, p))).collect()
    };
    let mut out = Vec::new();
    for start in (0..segments.len()).filter(|i| !done.contains(i)) {
        for (target, pos) in references(start) {
            if let Some(path) = shortest_path(target, start, &references) {
                let names: Vec<&str> = std::iter::once(start).chain(path).map(|i| segments[i].id.as_str()).collect();
                let message = format!("segment reference cycle: {}", names.join(" -> "));
                out.push(Diagnostic::new(&segments[start].file, pos, message));
                break;
            }
        }
    }
    out
}

/// Breadth-first path `from` → … → `to` (both included) along references.
fn shortest_path(from: usize, to: usize, references: &impl Fn(usize) -> Vec<(usize, Pos)>) -> Option<Vec<usize>> {
    let mut previous: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = BTreeSet::from([from]);
    while let Some(current) = queue.pop_front() {
        if current == to {
            let mut path = vec![to];
            let mut at = to;
            while let Some(&before) = previous.get(&at) {
                path.push(before);
                at = before;
            }
            path.reverse();
            return Some(path);
        }
        for (next, _) in references(current) {
            if seen.insert(next) {
                previous.insert(next, current);
                queue.push_back(next);
            }
        }
    }
    None
}
