//! Request grouping: deliveries of one campaign with the same messages go
//! out together (one push for a single recipient, else multicasts).
//!
//! "The same messages" is decided by the payload itself: [`PayloadKey`], a
//! hash of its JSON text, and then a full comparison, so neither how the
//! store decoded the rows nor a hash collision can merge different messages.

use renkei_core::LineUserId;
use renkei_store::dispatch::{NewRequest, RequestKind};
use serde_json::Value;
use std::collections::BTreeMap;
use std::hash::Hasher as _;
use std::sync::Arc;
// foldhash: the planner hashes every user id of a batch several times; SipHash was a tenth of its CPU.
use foldhash::{HashSet, HashSetExt};
use uuid::Uuid;

/// Deliveries and their users, in the order they go out.
pub(crate) type Recipients = Vec<(i64, LineUserId)>;

/// A payload's identity: a hash of its JSON text (the same text for equal
/// messages, however they were decoded). Equal keys are compared in full
/// before two deliveries share a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PayloadKey(u64);

impl PayloadKey {
    pub fn of(messages: &Value) -> Self {
        // SipHash with fixed keys: the same key in every process.
        let mut hasher = std::hash::DefaultHasher::new();
        let _ = serde_json::to_writer(HashWriter(&mut hasher), messages);
        Self(hasher.finish())
    }
}

/// Feeds serialized JSON into a hasher without building the string.
struct HashWriter<'a>(&'a mut std::hash::DefaultHasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One payload and the deliveries that carry it.
type Payload = (Arc<Value>, Recipients);

/// The sends a planning round decided, grouped by campaign and payload.
#[derive(Default)]
pub(crate) struct Sends {
    /// Per campaign and payload key, each distinct payload with that key and its recipients.
    groups: BTreeMap<(String, PayloadKey), Vec<Payload>>,
    /// The previous delivery's payload and key: runs of deliveries usually
    /// carry the same decoded payload, whose key need not be worked out again.
    last: Option<(Arc<Value>, PayloadKey)>,
}

impl Sends {
    /// Adds a send of `unit` (the campaign's, or its step's, aggregation unit).
    pub(crate) fn add(&mut self, unit: String, messages: Arc<Value>, delivery_id: i64, user: LineUserId) {
        let key = self.key_of(&messages);
        let payloads = self.groups.entry((unit, key)).or_default();
        match payloads.iter_mut().find(|(known, _)| Arc::ptr_eq(known, &messages) || **known == *messages) {
            Some((_, recipients)) => recipients.push((delivery_id, user)),
            None => payloads.push((messages, vec![(delivery_id, user)])),
        }
    }

    fn key_of(&mut self, messages: &Arc<Value>) -> PayloadKey {
        if let Some((last, key)) = &self.last
            && Arc::ptr_eq(last, messages)
        {
            return *key;
        }
        let key = PayloadKey::of(messages);
        self.last = Some((messages.clone(), key));
        key
    }

    /// The requests: per campaign and payload, see [`group_requests`].
    pub(crate) fn into_requests(self) -> Vec<NewRequest> {
        let mut out = Vec::new();
        for ((unit, _), payloads) in self.groups {
            for (messages, recipients) in payloads {
                out.extend(group_requests(&messages, recipients, &unit));
            }
        }
        out
    }
}

/// Identical messages: one push for a single recipient, else multicasts of
/// ≤ 500 distinct users (a user twice goes in a later request).
pub(crate) fn group_requests(messages: &Value, recipients: Recipients, unit: &str) -> Vec<NewRequest> {
    let mut out = Vec::new();
    let mut remaining = recipients;
    while !remaining.is_empty() {
        let mut seen = HashSet::new();
        let goes_now: Vec<bool> = remaining
            .iter()
            .map(|(_, user)| seen.len() < renkei_line::limits::MAX_RECIPIENTS && seen.insert(user.as_str()))
            .collect();
        let (mut delivery_ids, mut users, mut later) = (Vec::new(), Vec::new(), Vec::new());
        for ((id, user), now) in remaining.into_iter().zip(goes_now) {
            if now {
                delivery_ids.push(id);
                users.push(user);
            } else {
                later.push((id, user));
            }
        }
        let kind = if users.len() == 1 { RequestKind::Push } else { RequestKind::Multicast };
        out.push(NewRequest {
            kind,
            retry_key: Uuid::new_v4(),
            messages: messages.clone(),
            recipients: users,
            delivery_ids,
            aggregation_unit: Some(unit.to_string()),
        });
        remaining = later;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u32) -> LineUserId {
        LineUserId::parse(&format!("U{n:032x}")).expect("valid id")
    }

    #[test]
    fn one_recipient_is_a_push_and_many_are_multicasts_of_at_most_500_distinct_users() {
        let messages = serde_json::json!([{"type": "text", "text": "hi"}]);
        let single = group_requests(&messages, vec![(1, user(1))], "u");
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].kind, RequestKind::Push);

        let many: Vec<(i64, LineUserId)> = (0..1_201).map(|i| (i64::from(i), user(i))).collect();
        let requests = group_requests(&messages, many, "u");
        assert_eq!(requests.iter().map(|r| r.recipients.len()).collect::<Vec<_>>(), vec![500, 500, 201]);
        assert!(requests.iter().all(|r| r.kind == RequestKind::Multicast));
        let keys: HashSet<Uuid> = requests.iter().map(|r| r.retry_key).collect();
        assert_eq!(keys.len(), 3, "each request has its own retry key");

        let twice = vec![(1, user(7)), (2, user(7)), (3, user(8))];
        let requests = group_requests(&messages, twice, "u");
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].recipients, vec![user(7), user(8)]);
        assert_eq!(requests[1].recipients, vec![user(7)]);
        assert_eq!(requests[1].kind, RequestKind::Push);
    }

    #[test]
    fn equal_messages_group_whatever_their_allocation_and_different_ones_do_not() {
        let hi = || Arc::new(serde_json::json!([{"type": "text", "text": "hi"}]));
        let mut sends = Sends::default();
        sends.add("c".into(), hi(), 1, user(1));
        sends.add("c".into(), hi(), 2, user(2));
        let requests = sends.into_requests();
        assert_eq!(requests.len(), 1, "equal messages in different Arcs share one request");
        assert_eq!(requests[0].kind, RequestKind::Multicast);
        assert_eq!(requests[0].delivery_ids, vec![1, 2]);

        let mut sends = Sends::default();
        sends.add("c".into(), hi(), 1, user(1));
        sends.add("c".into(), Arc::new(serde_json::json!([{"type": "text", "text": "ho"}])), 2, user(2));
        sends.add("d".into(), hi(), 3, user(3));
        let requests = sends.into_requests();
        assert_eq!(requests.len(), 3, "different messages, or another campaign, never share a request");
        assert!(requests.iter().all(|r| r.kind == RequestKind::Push));

        assert_eq!(PayloadKey::of(&hi()), PayloadKey::of(&hi()));
        assert_ne!(PayloadKey::of(&hi()), PayloadKey::of(&serde_json::json!([{"type": "text", "text": "ho"}])));
    }
}
