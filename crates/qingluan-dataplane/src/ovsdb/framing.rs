//! Cuts the byte stream of an OVSDB connection into JSON-RPC messages.
//!
//! OVSDB sends JSON objects back to back with no length prefix or delimiter, and a read may
//! end anywhere: inside a message, inside a string, inside a multi-byte character. The
//! [`Framer`] scans the bytes once, tracking nesting depth and whether it is inside a string,
//! and hands each complete top-level value to serde_json. Each byte is looked at once, so a
//! large reply arriving in many reads costs linear time (re-parsing the whole buffer after
//! every read would be quadratic).

use serde_json::Value;

/// The largest message accepted; a peer sending more is treated as broken.
const MAX_MESSAGE: usize = 256 << 20;

/// Incremental splitter of concatenated JSON values.
#[derive(Default)]
pub(crate) struct Framer {
    /// Bytes received but not yet returned as a message.
    buf: Vec<u8>,
    /// How much of `buf` has been scanned.
    scanned: usize,
    /// Nesting depth of `{`/`[` at `scanned`; 0 = between messages.
    depth: usize,
    /// Whether `scanned` is inside a string.
    in_string: bool,
    /// Whether the previous byte was a backslash inside a string.
    escaped: bool,
}

impl Framer {
    /// Adds `bytes` and returns every message completed by them, in order.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Vec<Value>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if self.depth == 0 {
                match b {
                    b'{' | b'[' => {
                        consumed = i;
                        self.depth = 1;
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => consumed = i + 1,
                    _ => return Err(format!("unexpected byte {b:#04x} between messages")),
                }
            } else if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            let msg = serde_json::from_slice(&self.buf[consumed..=i])
                                .map_err(|e| format!("malformed message: {e}"))?;
                            out.push(msg);
                            consumed = i + 1;
                        }
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        self.buf.drain(..consumed);
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_MESSAGE {
            return Err(format!("message larger than {MAX_MESSAGE} bytes"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_concatenated_and_partial_messages() {
        let mut f = Framer::default();
        let m = f.push(br#"{"id":1,"result":[]}{"id":2,"res"#).unwrap();
        assert_eq!(m, vec![json!({"id": 1, "result": []})]);
        let m = f
            .push(br#"ult":{}} {"method":"echo","params":[],"id":"x"}"#)
            .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], json!({"id": 2, "result": {}}));
        assert_eq!(m[1]["method"], "echo");
        assert!(f.push(b"\n").unwrap().is_empty());
    }

    #[test]
    fn brackets_and_quotes_inside_strings_do_not_count() {
        let text = r#"{"a":"}]{[\"\\","b":["x}"]}{"c":1}"#.as_bytes();
        let mut f = Framer::default();
        let mut got = Vec::new();
        for byte in text {
            got.extend(f.push(std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(
            got,
            vec![json!({"a": "}]{[\"\\", "b": ["x}"]}), json!({"c": 1})]
        );
    }

    #[test]
    fn multibyte_characters_split_across_reads() {
        let text = r#"{"name":"网桥"}"#.as_bytes();
        let mut f = Framer::default();
        assert!(f.push(&text[..11]).unwrap().is_empty());
        assert_eq!(f.push(&text[11..]).unwrap(), vec![json!({"name": "网桥"})]);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut f = Framer::default();
        assert_eq!(
            f.push(b"{}x").unwrap_err(),
            "unexpected byte 0x78 between messages"
        );
        let mut f = Framer::default();
        assert!(f
            .push(b"{\"a\":tru}")
            .unwrap_err()
            .starts_with("malformed message: "));
    }
}
