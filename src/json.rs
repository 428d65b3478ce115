//! ASCII-only JSON (SPEC §4): the Store servlet decodes bodies in the JVM's default charset, 1024
//! bytes at a time, so every character outside ASCII goes out as a `\uXXXX` escape.

use serde::Serialize;
use serde_json::ser::Formatter;
use std::io::{self, Write};

struct AsciiFormatter;

impl Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (index, ch) in fragment.char_indices() {
            if ch.is_ascii() {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..index])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = index + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serialises `value` as compact JSON containing only ASCII bytes.
pub fn to_ascii_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    value
        .serialize(&mut serializer)
        .expect("our response types always serialise");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_outside_ascii() {
        let value = serde_json::json!({"title": "Lucid Lynx — café 😀", "plain": "a\"b\n"});
        let bytes = to_ascii_json(&value);
        assert!(bytes.is_ascii());
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(r"Lucid Lynx \u2014 caf\u00e9 \ud83d\ude00"),
            "{text}"
        );
        assert!(text.contains(r#""a\"b\n""#), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }
}
