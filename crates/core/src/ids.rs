//! Identifiers. Each has a `parse` that is the only way in, so a value of
//! these types is always valid.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters (got {got})")]
    TooLong { max: usize, got: usize },
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must not be only spaces")]
    Blank,
    #[error("must be \"U\" followed by 32 lowercase hex digits (got {0:?})")]
    LineUserId(String),
    #[error("must match [a-z][a-z0-9_]* and be at most 64 characters (got {0:?})")]
    EventType(String),
}

fn check_key(text: &str, max: usize) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    let got = text.chars().count();
    if got > max {
        return Err(IdError::TooLong { max, got });
    }
    if text.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter);
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }
    };
}

string_id!(
    /// A company's own member key: 1 to 128 characters, no control characters.
    MemberId
);
string_id!(
    /// A LINE user ID: `U` followed by 32 lowercase hex digits.
    LineUserId
);
string_id!(
    /// An event type: `[a-z][a-z0-9_]*`, at most 64 characters.
    EventType
);
string_id!(
    /// A client-chosen idempotency key for an event: 1 to 128 characters.
    EventId
);

impl MemberId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(text: &str) -> Result<Self, IdError> {
        check_key(text, Self::MAX_CHARS)?;
        if text.trim().is_empty() {
            return Err(IdError::Blank);
        }
        Ok(Self(text.to_string()))
    }
}

impl EventId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(text: &str) -> Result<Self, IdError> {
        check_key(text, Self::MAX_CHARS)?;
        Ok(Self(text.to_string()))
    }
}

impl LineUserId {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let valid = text.len() == 33
            && text.starts_with('U')
            && text[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid { Ok(Self(text.to_string())) } else { Err(IdError::LineUserId(truncate_for_message(text))) }
    }
}

impl EventType {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(text: &str) -> Result<Self, IdError> {
        let mut bytes = text.bytes();
        let valid = text.len() <= Self::MAX_CHARS
            && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid { Ok(Self(text.to_string())) } else { Err(IdError::EventType(truncate_for_message(text))) }
    }
}

/// Keeps error messages readable when the offending input is huge.
fn truncate_for_message(text: &str) -> String {
    const KEEP: usize = 40;
    if text.chars().count() <= KEEP {
        text.to_string()
    } else {
        let head: String = text.chars().take(KEEP).collect();
        format!("{head}…")
    }
}

/// How a member came to be linked to a LINE user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMethod {
    AccountLink,
    IdToken,
    Api,
    Import,
}

impl LinkMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkMethod::AccountLink => "account_link",
            LinkMethod::IdToken => "id_token",
            LinkMethod::Api => "api",
            LinkMethod::Import => "import",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "account_link" => Some(LinkMethod::AccountLink),
            "id_token" => Some(LinkMethod::IdToken),
            "api" => Some(LinkMethod::Api),
            "import" => Some(LinkMethod::Import),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_id_of_only_spaces_is_refused() {
        assert!(matches!(MemberId::parse("   "), Err(IdError::Blank)));
        assert!(matches!(MemberId::parse("\u{3000}"), Err(IdError::Blank)), "an ideographic space too");
        assert_eq!(MemberId::parse(" m1 ").map(|id| id.to_string()).ok().as_deref(), Some(" m1 "));
    }

    #[test]
    fn line_user_id_accepts_only_u_and_32_lowercase_hex() {
        assert!(LineUserId::parse("U4af4980629a0b7a1fd4a3c1bb0d7d9c0").is_ok());
        for bad in [
            "",
            "U4af4980629a0b7a1fd4a3c1bb0d7d9c",
            "U4af4980629a0b7a1fd4a3c1bb0d7d9c00",
            "u4af4980629a0b7a1fd4a3c1bb0d7d9c0",
            "U4AF4980629A0B7A1FD4A3C1BB0D7D9C0",
            "U4af4980629a0b7a1fd4a3c1bb0d7d9cg",
        ] {
            assert!(LineUserId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn member_id_limits() {
        assert!(MemberId::parse("m-1").is_ok());
        assert_eq!(MemberId::parse(""), Err(IdError::Empty));
        assert!(MemberId::parse(&"x".repeat(128)).is_ok());
        assert_eq!(MemberId::parse(&"x".repeat(10_000)), Err(IdError::TooLong { max: 128, got: 10_000 }));
        assert_eq!(MemberId::parse("a\nb"), Err(IdError::ControlCharacter));
        // Characters, not bytes: 128 Japanese characters are fine.
        assert!(MemberId::parse(&"会".repeat(128)).is_ok());
    }

    #[test]
    fn event_type_pattern() {
        for good in ["purchase", "cart_add", "a1", "x"] {
            assert!(EventType::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "Purchase", "1abc", "_x", "cart-add", "カート", &"a".repeat(65)] {
            assert!(EventType::parse(bad).is_err(), "{bad}");
        }
    }
}
