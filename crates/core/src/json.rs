//! JSON input that `serde_json` would change silently: an integer literal
//! beyond 64 bits parses as the nearest float (`12345678901234567890123`
//! becomes `1.2345678901234568e22`). [`wide_integer`] finds the first such
//! literal in a text that is valid JSON, with the path of the field it is in.

/// What an integer literal beyond 64 bits is told.
pub const WIDE_INTEGER: &str = "an integer beyond 64 bits would not keep its exact value; send it as a string";

/// Where a container is in its walk: the object's current key, or the
/// array's current index.
enum Frame {
    Object(String),
    Array(usize),
}

/// The path (`events[3].properties.amount`) of the first integer literal in
/// the valid JSON `text` that fits neither `i64` nor `u64`.
pub fn wide_integer(text: &[u8]) -> Option<String> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while let Some(&byte) = text.get(i) {
        match byte {
            b'"' => {
                let end = string_end(text, i);
                if expect_key {
                    let key = String::from_utf8_lossy(&text[i + 1..end.saturating_sub(1)]).into_owned();
                    if let Some(Frame::Object(current)) = stack.last_mut() {
                        *current = key;
                    }
                }
                i = end;
                continue;
            }
            b'{' => {
                stack.push(Frame::Object(String::new()));
                expect_key = true;
            }
            b'[' => {
                stack.push(Frame::Array(0));
                expect_key = false;
            }
            b'}' | b']' => {
                stack.pop();
            }
            b':' => expect_key = false,
            b',' => match stack.last_mut() {
                Some(Frame::Array(index)) => *index += 1,
                _ => expect_key = true,
            },
            b'-' | b'0'..=b'9' => {
                let end = text[i..].iter().position(|b| !b"-+.eE0123456789".contains(b)).map_or(text.len(), |n| i + n);
                if !fits_64_bits(&text[i..end]) {
                    return Some(path(&stack));
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index just past the string literal that starts at `start`.
fn string_end(text: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&byte) = text.get(i) {
        match byte {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    text.len()
}

fn fits_64_bits(number: &[u8]) -> bool {
    if number.iter().any(|b| b"+.eE".contains(b)) {
        return true; // a float as written
    }
    let text = std::str::from_utf8(number).unwrap_or("0");
    text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok()
}

fn path(stack: &[Frame]) -> String {
    let mut out = String::new();
    for frame in stack {
        match frame {
            Frame::Object(key) if out.is_empty() => out.push_str(key),
            Frame::Object(key) => {
                out.push('.');
                out.push_str(key);
            }
            Frame::Array(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::wide_integer;

    #[test]
    fn integers_beyond_64_bits_are_found_with_their_path() {
        let body = br#"{"events": [{"type": "a", "properties": {"n": 1}},
            {"type": "b\"]", "properties": {"ok": 18446744073709551615, "min": -9223372036854775808,
             "f": 1e400, "big": 18446744073709551616}}]}"#;
        assert_eq!(wide_integer(body).as_deref(), Some("events[1].properties.big"));
        assert_eq!(wide_integer(br#"[1, 2, -9223372036854775809]"#).as_deref(), Some("[2]"));
        assert_eq!(wide_integer(br#"{"a": "123456789012345678901234567890", "b": 1.5e30}"#), None);
    }
}
