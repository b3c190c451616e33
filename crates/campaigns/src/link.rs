//! Tracked-link tokens: `/t/<token>` carries, sealed, the campaign, the
//! trigger, the LINE user and the target the template rendered. Member-code
//! tokens (`/member-code/<token>`) carry a member id and an expiry, sealed
//! the same way for another purpose.
//!
//! A token is base64url (no padding) of `key id (4) ‖ nonce (12) ‖
//! ChaCha20-Poly1305 ciphertext and tag` of the JSON array `[campaign_id,
//! trigger_key, line_user_id, target]`, with the key id as associated data.
//! The nonce is HMAC-SHA256 of the payload under the key's nonce subkey,
//! cut to 12 bytes (SIV-like): the same tuple always seals to the same token,
//! so every render of one delivery's link is one token. The URL reads as
//! noise: no user id, campaign or target in browser history or `Referer`.
//!
//! [`LinkKeys`] come from `server.link_keys`: the first seals, every one
//! opens (rotation: keep the previous key after the new first one).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The shortest `server.link_keys` entry accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Purposes sealed under the same keys. Tracked links' purpose is empty:
/// their associated data is the key id alone, as before member codes.
const TRACKED_LINK: &[u8] = b"";
const MEMBER_CODE: &[u8] = b"member-code";

/// What a member-code image URL (`/member-code/<token>`, the scannable code
/// of a digital member card) stands for: the member, until `expires_at`
/// (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCode {
    pub member_id: String,
    pub expires_at: i64,
}

/// What a tracked link stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPayload {
    pub campaign_id: String,
    /// The delivery's trigger (`entered:<id>`, `schedule:<time>`, `event:<id>`).
    pub trigger_key: String,
    pub line_user_id: String,
    /// The URL the template gave `track`.
    pub target: String,
}

impl LinkPayload {
    /// The `event_id` of this link's click: one per (campaign, trigger,
    /// user, target), so repeated clicks, even of a token re-sealed under a
    /// newer key, are one event.
    pub fn click_event_id(&self) -> String {
        use sha2::Digest as _;
        let digest = Sha256::digest(self.to_json());
        let mut id = String::from("link_click:");
        for byte in &digest[..20] {
            id.push_str(&format!("{byte:02x}"));
        }
        id
    }

    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&[&self.campaign_id, &self.trigger_key, &self.line_user_id, &self.target])
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("a link key must be at least {MIN_KEY_LEN} bytes (key {index} has {len})")]
    ShortKey { index: usize, len: usize },
    #[error("no link key is configured")]
    NoKey,
    /// Not base64url, too short, or not a payload: never a token of ours.
    #[error("not a tracked-link token")]
    Malformed,
    /// No configured key has the token's key id.
    #[error("the token's key is not configured")]
    UnknownKey,
    /// The ciphertext does not authenticate under the key: tampered.
    #[error("the token does not verify")]
    Rejected,
    /// A member-code token past its `expires_at`.
    #[error("the token has expired")]
    Expired,
}

struct LinkKey {
    id: [u8; KEY_ID_LEN],
    cipher: ChaCha20Poly1305,
    nonce_key: [u8; 32],
}

/// The configured keys, the first one sealing.
pub struct LinkKeys {
    keys: Vec<LinkKey>,
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkKeys({} keys)", self.keys.len())
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl LinkKey {
    fn derive(secret: &[u8]) -> LinkKey {
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&hmac(secret, &[b"renkei link key id"])[..KEY_ID_LEN]);
        let cipher_key = hmac(secret, &[b"renkei link cipher"]);
        LinkKey {
            id,
            cipher: ChaCha20Poly1305::new(&Key::from(cipher_key)),
            nonce_key: hmac(secret, &[b"renkei link nonce"]),
        }
    }
}

impl LinkKeys {
    /// Keys from their configured secrets, the first one sealing.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Result<LinkKeys, LinkError> {
        if secrets.is_empty() {
            return Err(LinkError::NoKey);
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for (index, secret) in secrets.iter().enumerate() {
            let secret = secret.as_ref();
            if secret.len() < MIN_KEY_LEN {
                return Err(LinkError::ShortKey { index, len: secret.len() });
            }
            keys.push(LinkKey::derive(secret));
        }
        Ok(LinkKeys { keys })
    }

    /// The token of `payload` under the first key; the same payload always
    /// gives the same token.
    pub fn seal(&self, payload: &LinkPayload) -> String {
        self.seal_plain(TRACKED_LINK, &payload.to_json())
    }

    /// The payload of a token sealed by any configured key.
    pub fn open(&self, token: &str) -> Result<LinkPayload, LinkError> {
        parse_payload(&self.open_plain(TRACKED_LINK, token)?)
    }

    /// The token of a member-code image URL (see [`MemberCode`]).
    pub fn seal_member_code(&self, code: &MemberCode) -> String {
        let plain = serde_json::to_vec(&(&code.member_id, code.expires_at)).unwrap_or_default();
        self.seal_plain(MEMBER_CODE, &plain)
    }

    /// The member code of a token, if it verifies and has not expired at
    /// `now` (Unix seconds). A tracked-link token never opens as one.
    pub fn open_member_code(&self, token: &str, now: i64) -> Result<MemberCode, LinkError> {
        let plain = self.open_plain(MEMBER_CODE, token)?;
        let (member_id, expires_at): (String, i64) =
            serde_json::from_slice(&plain).map_err(|_| LinkError::Malformed)?;
        if now >= expires_at {
            return Err(LinkError::Expired);
        }
        Ok(MemberCode { member_id, expires_at })
    }

    /// Seals `plain` for `purpose` (associated data after the key id, so a
    /// token of one purpose never opens as another's).
    fn seal_plain(&self, purpose: &[u8], plain: &[u8]) -> String {
        let key = &self.keys[0];
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&hmac(&key.nonce_key, &[purpose, plain])[..NONCE_LEN]);
        let aad = [key.id.as_slice(), purpose].concat();
        // Encryption fails only for a message over 256 GiB.
        let sealed = key.cipher.encrypt(&Nonce::from(nonce), Payload { msg: plain, aad: &aad }).unwrap_or_default();
        let mut token = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + sealed.len());
        token.extend_from_slice(&key.id);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(token)
    }

    fn open_plain(&self, purpose: &[u8], token: &str) -> Result<Vec<u8>, LinkError> {
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| LinkError::Malformed)?;
        if bytes.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
            return Err(LinkError::Malformed);
        }
        let (id, rest) = bytes.split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::from(<[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| LinkError::Malformed)?);
        let aad = [id, purpose].concat();
        let mut result = Err(LinkError::UnknownKey);
        for key in self.keys.iter().filter(|k| k.id == id) {
            match key.cipher.decrypt(&nonce, Payload { msg: sealed, aad: &aad }) {
                Ok(plain) => return Ok(plain),
                Err(_) => result = Err(LinkError::Rejected),
            }
        }
        result
    }
}

fn parse_payload(plain: &[u8]) -> Result<LinkPayload, LinkError> {
    let parts: Vec<String> = serde_json::from_slice(plain).map_err(|_| LinkError::Malformed)?;
    match <[String; 4]>::try_from(parts) {
        Ok([campaign_id, trigger_key, line_user_id, target]) => {
            Ok(LinkPayload { campaign_id, trigger_key, line_user_id, target })
        }
        Err(_) => Err(LinkError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn payload() -> LinkPayload {
        LinkPayload {
            campaign_id: "thanks".into(),
            trigger_key: "entered:7".into(),
            line_user_id: "U00000000000000000000000000000001".into(),
            target: "https://shop.example/cart?id=1".into(),
        }
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(LinkKeys::new::<&str>(&[]).expect_err("refused"), LinkError::NoKey);
        assert_eq!(LinkKeys::new(&[KEY_A, "short"]).expect_err("refused"), LinkError::ShortKey { index: 1, len: 5 });
    }

    #[test]
    fn rotation_keeps_old_tokens_and_drops_removed_keys() {
        let old = LinkKeys::new(&[KEY_A]).expect("keys");
        let token = old.seal(&payload());
        assert_eq!(token, old.seal(&payload()), "deterministic");
        assert!(!token.contains("U000") && !token.contains("thanks") && !token.contains("shop"));
        let rotated = LinkKeys::new(&[KEY_B, KEY_A]).expect("keys");
        assert_eq!(rotated.open(&token), Ok(payload()));
        assert_ne!(rotated.seal(&payload()), token, "the first key seals");
        let removed = LinkKeys::new(&[KEY_B]).expect("keys");
        assert_eq!(removed.open(&token), Err(LinkError::UnknownKey));
        assert_eq!(removed.open("thanks"), Err(LinkError::Malformed));
        assert_eq!(removed.open("not base64!"), Err(LinkError::Malformed));
    }

    #[test]
    fn member_codes_expire_and_never_open_as_tracked_links() {
        let keys = LinkKeys::new(&[KEY_A]).expect("keys");
        let code = MemberCode { member_id: "M00001".into(), expires_at: 1_000 };
        let token = keys.seal_member_code(&code);
        assert!(!token.contains("M0000"));
        assert_eq!(keys.open_member_code(&token, 999), Ok(code));
        assert_eq!(keys.open_member_code(&token, 1_000), Err(LinkError::Expired));
        // The purposes are kept apart: each refuses the other's token.
        assert_eq!(keys.open(&token), Err(LinkError::Rejected));
        assert_eq!(keys.open_member_code(&keys.seal(&payload()), 0), Err(LinkError::Rejected));
        let mut tampered = token.into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert!(keys.open_member_code(&tampered, 0).is_err());
    }
}
