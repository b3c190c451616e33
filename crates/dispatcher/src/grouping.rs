//! Request grouping: deliveries of one campaign with the same messages go
//! out together (one push for a single recipient, else multicasts).

use renkei_core::LineUserId;
use renkei_store::dispatch::{NewRequest, RequestKind};
use serde_json::Value;
// foldhash: the planner hashes every user id of a batch several times; SipHash was a tenth of its CPU.
use foldhash::{HashSet, HashSetExt};
use uuid::Uuid;

/// Deliveries and their users, in the order they go out.
pub(crate) type Recipients = Vec<(i64, LineUserId)>;

/// Identical messages: one push for a single recipient, else multicasts of
/// ≤ 500 distinct users (a user twice goes in a later request).
pub(crate) fn group_requests(messages: &Value, recipients: Recipients) -> Vec<NewRequest> {
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
        let single = group_requests(&messages, vec![(1, user(1))]);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].kind, RequestKind::Push);

        let many: Vec<(i64, LineUserId)> = (0..1_201).map(|i| (i64::from(i), user(i))).collect();
        let requests = group_requests(&messages, many);
        assert_eq!(requests.iter().map(|r| r.recipients.len()).collect::<Vec<_>>(), vec![500, 500, 201]);
        assert!(requests.iter().all(|r| r.kind == RequestKind::Multicast));
        let keys: HashSet<Uuid> = requests.iter().map(|r| r.retry_key).collect();
        assert_eq!(keys.len(), 3, "each request has its own retry key");

        let twice = vec![(1, user(7)), (2, user(7)), (3, user(8))];
        let requests = group_requests(&messages, twice);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].recipients, vec![user(7), user(8)]);
        assert_eq!(requests[1].recipients, vec![user(7)]);
        assert_eq!(requests[1].kind, RequestKind::Push);
    }
}
