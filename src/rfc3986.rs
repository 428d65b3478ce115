//! Percent-encoding as RFC 3986 defines "unreserved": every byte of the UTF-8 form but
//! `A-Z a-z 0-9 - _ . ~` becomes `%XX` in upper-case hex, so a space is `%20`, never `+`. The Store
//! servlet's signature (SPEC §4.1) and AWS's Query and V4 signatures (SPEC §7) all encode this way.

pub fn encode(text: &str) -> String {
    encode_except(text, b"")
}

/// [`encode`], also leaving the bytes in `keep` as they are (`/` for an S3 key's path).
pub fn encode_except(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || keep.contains(&byte)
        {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_unreserved_bytes_stay() {
        assert_eq!(super::encode("a b+c/é~"), "a%20b%2Bc%2F%C3%A9~");
        assert_eq!(super::encode_except("a b/c", b"/"), "a%20b/c");
    }
}
