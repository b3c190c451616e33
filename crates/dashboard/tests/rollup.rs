//! The roll-up on both backends: one instance folds at a time (the lease),
//! and folding keeps the overview's counts.

use chrono::{TimeZone, Utc};
use renkei_core::{Clock, LineUserId, ManualClock};
use renkei_dashboard::DashboardStore;
use renkei_dashboard::rollup::{FOLD_AFTER_DAYS, Rollup};
use renkei_test_support::TestStore;
use std::sync::Arc;

async fn one_instance_folds_and_the_counts_stay(store: TestStore) {
    let start = Utc.with_ymd_and_hms(2026, 9, 1, 0, 0, 0).single().expect("time");
    for n in 0..3u32 {
        let user = LineUserId::parse(&format!("U{n:032x}")).expect("user");
        store.set_following(&user, n != 1, start + chrono::Duration::days(i64::from(n))).await.expect("follow");
    }
    let counts = store.overview_counts().await.expect("counts");
    let clock = Arc::new(ManualClock::new(start + chrono::Duration::days(FOLD_AFTER_DAYS + 2)));
    let view = DashboardStore::of(&store.store);
    let first = Rollup::new(view.clone(), clock.clone() as Arc<dyn Clock>);
    let second = Rollup::new(view.clone(), clock.clone() as Arc<dyn Clock>);
    // The second instance finds the lease taken while the first holds it.
    view.leases
        .acquire_lease("dashboard_rollup", "someone", clock.now(), clock.now() + chrono::Duration::minutes(1))
        .await
        .expect("lease");
    assert_eq!(second.fold_once().await.expect("fold"), None, "another holds the lease");
    view.leases.release_lease("dashboard_rollup", "someone").await.expect("release");
    let folded = first.fold_once().await.expect("fold").expect("got the lease");
    assert!(folded >= 2, "the first two days' follows are old enough: {folded}");
    assert_eq!(store.overview_counts().await.expect("counts"), counts);
    assert_eq!(second.fold_once().await.expect("fold"), Some(0), "the lease was given back; nothing left");
}

renkei_test_support::on_both_backends!(renkei_test_support::store => one_instance_folds_and_the_counts_stay);
