//! PendingStore conformance: what a stop leaves waiting round-trips on both
//! backends, and a row goes once removed.

use renkei_core::{Cause, UserRef};
use renkei_store::PendingEvaluations;
use renkei_test_support::TestStore;

mod common;
use common::{at, member, user};

async fn pending_evaluations_round_trip_and_are_removed(store: TestStore) {
    assert!(store.saved_pending().await.expect("read").is_empty());
    store.save_pending(&PendingEvaluations::default(), at(9)).await.expect("nothing to save");
    assert!(store.saved_pending().await.expect("read").is_empty(), "an empty stop saves no row");

    let first = PendingEvaluations {
        users: vec![
            (UserRef::LineUser(user(1)), Cause::Event),
            (UserRef::Member(member("m-2")), Cause::Member),
            (UserRef::LineUser(user(1)), Cause::Follow),
        ],
        everyone: false,
    };
    let second = PendingEvaluations { users: Vec::new(), everyone: true };
    store.save_pending(&first, at(10)).await.expect("save");
    store.save_pending(&second, at(11)).await.expect("save");
    let saved = store.saved_pending().await.expect("read");
    assert_eq!(saved.len(), 2);
    assert_eq!((saved[0].pending.clone(), saved[0].saved_at), (first, at(10)));
    assert_eq!((saved[1].pending.clone(), saved[1].saved_at), (second, at(11)));

    store.remove_pending(saved[0].id).await.expect("remove");
    let left = store.saved_pending().await.expect("read");
    assert_eq!(left.iter().map(|s| s.id).collect::<Vec<_>>(), vec![saved[1].id]);
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    pending_evaluations_round_trip_and_are_removed,
);
