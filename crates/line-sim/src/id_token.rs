//! LINE Login ID tokens issued and verified by the simulator.
//!
//! Real tokens are ES256/HS256 JWTs that only LINE checks (renkei always
//! asks `/oauth2/v2.1/verify`), so the simulator signs its own JWT-shaped
//! tokens with HMAC-SHA256 over the channel secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use renkei_line::client::IdTokenClaims;
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

pub const ISSUER: &str = "https://access.line.me";

fn mac(secret: &str, data: &[u8]) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub(crate) fn issue(secret: &str, user_id: &str, channel_id: &str, exp: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"HS256"}"#);
    let claims = IdTokenClaims {
        iss: ISSUER.to_string(),
        sub: user_id.to_string(),
        aud: channel_id.to_string(),
        exp,
        iat: now_secs(),
        nonce: None,
        amr: Some(vec!["linesso".to_string()]),
        name: Some(format!("LINE user {}", user_id.get(1..7).unwrap_or(user_id))),
        picture: None,
        email: None,
    };
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(mac(secret, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// Checks a token; the error is LINE's `error_description`.
pub(crate) fn verify(secret: &str, token: &str, client_id: &str) -> Result<IdTokenClaims, &'static str> {
    const INVALID: &str = "Invalid IdToken.";
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(INVALID);
    };
    let given = URL_SAFE_NO_PAD.decode(signature).map_err(|_| INVALID)?;
    let mut check = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| INVALID)?;
    check.update(format!("{header}.{payload}").as_bytes());
    // verify_slice compares in constant time.
    check.verify_slice(&given).map_err(|_| INVALID)?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| INVALID)?;
    let claims: IdTokenClaims = serde_json::from_slice(&payload).map_err(|_| INVALID)?;
    if claims.exp <= now_secs() {
        return Err("IdToken expired.");
    }
    if claims.aud != client_id {
        return Err("Invalid IdToken Audience.");
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let user = "U4af4980629a0b7a1fd4a3c1bb0d7d9c0";
        let token = issue("s", user, "1234", now_secs() + 60);
        assert_eq!(verify("s", &token, "1234").unwrap().sub, user);
        assert_eq!(verify("s", &token, "999"), Err("Invalid IdToken Audience."));
        assert_eq!(verify("other", &token, "1234"), Err("Invalid IdToken."));
        assert_eq!(verify("s", &issue("s", user, "1234", now_secs() - 1), "1234"), Err("IdToken expired."));
        for bad in ["", "a.b", "a.b.c", "a.b.c.d", &token.replace('.', "")] {
            assert_eq!(verify("s", bad, "1234"), Err("Invalid IdToken."));
        }
    }
}
