//! Cutting text from users and targets to a size that fits a status, an
//! Event or a log line. Every cut lands on a character boundary: a byte
//! index into a `String` that splits a multi-byte character panics, and a
//! target decides what bytes its answers hold. Pure.

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a
/// character boundary.
pub fn prefix(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// Shortens `text` in place to at most `max_bytes` bytes, on a character
/// boundary, ending with `…` when anything was cut.
pub fn truncate(text: &mut String, max_bytes: usize) {
    const ELLIPSIS: &str = "…";
    if text.len() <= max_bytes {
        return;
    }
    let keep = prefix(text, max_bytes.saturating_sub(ELLIPSIS.len())).len();
    text.truncate(keep);
    if max_bytes >= ELLIPSIS.len() {
        text.push_str(ELLIPSIS);
    }
}

/// At most `max_bytes` of `bytes` as text: invalid UTF-8 is replaced, and
/// the cut never splits a character.
pub fn lossy_prefix(bytes: &[u8], max_bytes: usize) -> String {
    let head = bytes.get(..bytes.len().min(max_bytes)).unwrap_or(bytes);
    let mut text = String::from_utf8_lossy(head).into_owned();
    // A replacement character is 3 bytes: a cut byte sequence may have grown.
    let keep = prefix(&text, max_bytes).len();
    text.truncate(keep);
    text
}

/// [`truncate`] of a copy.
pub fn shortened(text: &str, max_bytes: usize) -> String {
    let mut text = text.to_owned();
    truncate(&mut text, max_bytes);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn multi_byte_characters_are_never_split() {
        let text = "é€😀".repeat(100);
        for max in 0..40 {
            let cut = prefix(&text, max);
            assert!(cut.len() <= max);
            assert!(text.starts_with(cut));
        }
        let mut long = text.clone();
        truncate(&mut long, 200);
        assert!(long.len() <= 200 && long.ends_with('…'), "{long}");
    }

    #[test]
    fn invalid_utf8_is_replaced_and_cut_within_the_limit() {
        let bytes = [b'a', 0xff, 0xfe, 0xe2, 0x82];
        for max in 0..8 {
            assert!(lossy_prefix(&bytes, max).len() <= max);
        }
        assert_eq!(lossy_prefix(b"plain", 3), "pla");
    }

    #[test]
    fn short_text_is_left_alone() {
        let mut text = String::from("fine");
        truncate(&mut text, 4);
        assert_eq!(text, "fine");
    }

    proptest! {
        #[test]
        fn any_text_and_any_limit_cut_without_panicking(text in any::<String>(), max in 0usize..64) {
            let mut cut = text.clone();
            truncate(&mut cut, max);
            prop_assert!(cut.len() <= max.max(text.len().min(max)));
            prop_assert!(prefix(&text, max).len() <= max);
        }
    }
}
