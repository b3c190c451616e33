//! Tracked-link tokens: every payload round-trips, any single-byte change
//! of a token is refused.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use renkei_campaigns::{LinkKeys, LinkPayload};

const KEY: &str = "proptest-link-key-0123456789abcdef0123";

fn payload() -> impl Strategy<Value = LinkPayload> {
    (".{0,20}", ".{0,30}", "U[0-9a-f]{32}", "https://.{0,60}").prop_map(
        |(campaign_id, trigger_key, line_user_id, target)| LinkPayload {
            campaign_id,
            trigger_key,
            line_user_id,
            target,
        },
    )
}

proptest! {
    #[test]
    fn tokens_round_trip_and_reject_any_changed_byte(payload in payload(), at in any::<prop::sample::Index>(), delta in 1u8..) {
        let keys = LinkKeys::new(&[KEY]).unwrap();
        let token = keys.seal(&payload);
        prop_assert_eq!(keys.open(&token), Ok(payload.clone()));
        prop_assert!(!token.contains(&payload.line_user_id));
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        prop_assert!(keys.open(&URL_SAFE_NO_PAD.encode(&bytes)).is_err());
        let truncated = &token[..at.index(token.len())];
        prop_assert!(keys.open(truncated).is_err());
    }
}
