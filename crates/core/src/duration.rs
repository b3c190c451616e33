//! Durations as written in YAML and config: an integer and one unit
//! (`30s`, `15m`, `1h`, `90d`, `2w`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpanDuration {
    seconds: i64,
    text_unit: char,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected an integer and a unit s, m, h, d or w (e.g. 90d, 1h, 30s)")]
pub struct DurationParseError {
    pub input: String,
}

impl SpanDuration {
    pub fn seconds(&self) -> i64 {
        self.seconds
    }

    pub fn to_chrono(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.seconds)
    }

    pub fn from_seconds(seconds: i64) -> Self {
        Self { seconds, text_unit: 's' }
    }
}

impl FromStr for SpanDuration {
    type Err = DurationParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || DurationParseError { input: input.to_string() };
        let unit = input.chars().last().ok_or_else(err)?;
        let digits = &input[..input.len() - unit.len_utf8()];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let amount: i64 = digits.parse().map_err(|_| err())?;
        let per_unit = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(err()),
        };
        // Cap at ~100 years so arithmetic on timestamps can never overflow.
        let seconds = amount.checked_mul(per_unit).filter(|s| *s <= 3_155_760_000).ok_or_else(err)?;
        Ok(Self { seconds, text_unit: unit })
    }
}

impl fmt::Display for SpanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_unit = match self.text_unit {
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => 1,
        };
        write!(f, "{}{}", self.seconds / per_unit, self.text_unit)
    }
}

impl Serialize for SpanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases = [("30s", 30), ("15m", 900), ("1h", 3600), ("90d", 7_776_000), ("2w", 1_209_600), ("0s", 0)];
        for (text, seconds) in cases {
            let parsed: SpanDuration = text.parse().expect(text);
            assert_eq!(parsed.seconds(), seconds, "{text}");
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        for text in ["", "h", "1", "1x", "-1h", "1.5h", " 1h", "1h ", "１h", "99999999999999999999d", "1000000w"] {
            assert!(text.parse::<SpanDuration>().is_err(), "{text:?} should be rejected");
        }
    }
}
