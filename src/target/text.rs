//! Cutting text that came from a user or a target to a size, on a char
//! boundary. `String::truncate` and `&s[..n]` panic when `n` falls inside a
//! multi-byte character, and a target decides where its characters fall:
//! every cut of foreign text goes through here. Pure.

/// The longest prefix of `text` that is at most `max_bytes` long and ends
/// on a char boundary.
pub fn cut(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1; // 0 is always a boundary, so this stops
    }
    text.get(..end).unwrap_or_default()
}

/// [`cut`] in place.
pub fn truncate(text: &mut String, max_bytes: usize) {
    let len = cut(text, max_bytes).len();
    text.truncate(len);
}

/// At most `max_bytes` of `bytes` as text: invalid UTF-8 is replaced, and
/// the cut never splits a character.
pub fn lossy_prefix(bytes: &[u8], max_bytes: usize) -> String {
    let head = bytes.get(..bytes.len().min(max_bytes)).unwrap_or(bytes);
    let mut text = String::from_utf8_lossy(head).into_owned();
    // A replacement character is 3 bytes: a cut byte sequence may have grown.
    truncate(&mut text, max_bytes);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_never_split_a_character() {
        let text = "é€😀".repeat(50);
        for max in 0..text.len() + 2 {
            let head = cut(&text, max);
            assert!(head.len() <= max);
            assert!(text.starts_with(head));
            let mut owned = text.clone();
            truncate(&mut owned, max);
            assert_eq!(owned, head);
        }
    }

    #[test]
    fn invalid_bytes_become_bounded_text() {
        let bytes = [0xffu8, 0xfe, b'a', 0xe2, 0x82];
        for max in 0..8 {
            assert!(lossy_prefix(&bytes, max).len() <= max);
        }
    }
}
