//! A shortcut past serde_json for the form nearly every message has: one
//! JSON object whose values are plain strings (no escapes) or booleans,
//! each of a known set of fields at most once.
//!
//! Decoding a transfer through serde_json's generic path took about 4,000
//! instructions, half of the state machine's work on the durable core
//! (row 4 of `txledger-bench`, under callgrind). This reader does the same
//! for that form in a fraction of it. It decides nothing: anything it does
//! not recognise (an escape, a number, a nested value, a field missing,
//! repeated or unknown, malformed JSON) returns `None`, and the caller then
//! asks serde_json, which accepts or refuses it and says why. Where it does
//! answer, serde_json would have read the same values; the property tests
//! of `wire` hold it to that on generated transfers and credits of every
//! shape.

/// A field's value in the plain form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Str(&'a str),
    Bool(bool),
}

/// The values of `names`, in that order, when `bytes` is an object of
/// those fields and no other, each at most once, each a string without
/// escapes or control characters or `true` or `false`, with any JSON
/// whitespace between tokens. A field absent from the object is `None`.
pub(crate) fn fields<'a, const N: usize>(
    bytes: &'a [u8],
    names: &[&str; N],
) -> Option<[Option<Value<'a>>; N]> {
    // Validating the whole message at once is cheap for ASCII, and makes
    // every slice taken below a valid `str`.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut reader = Reader {
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut values: [Option<Value<'a>>; N] = [None; N];
    reader.expect(b'{')?;
    for seen in 0.. {
        let key = reader.string(text)?;
        reader.expect(b':')?;
        let value = reader.value(text)?;
        // Writers mostly keep one order: the name in this place is tried
        // first, which saves comparing the key with every other name.
        let index = match names.get(seen) {
            Some(name) if *name == key => seen,
            _ => names.iter().position(|name| *name == key)?,
        };
        if values[index].replace(value).is_some() {
            return None;
        }
        match reader.token()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    reader.skip_whitespace();
    (reader.at == reader.bytes.len()).then_some(values)
}

/// [`fields`] when every one of `names` is there, as a string.
pub(crate) fn string_fields<'a, const N: usize>(
    bytes: &'a [u8],
    names: &[&str; N],
) -> Option<[&'a str; N]> {
    let values = fields(bytes, names)?;
    let mut out = [""; N];
    for (slot, value) in out.iter_mut().zip(values) {
        let Some(Value::Str(text)) = value else {
            return None;
        };
        *slot = text;
    }
    Some(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace.
    fn token(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.token()? == byte).then_some(())
    }

    /// A string as in [`Reader::string`], or `true` or `false`.
    fn value<'t>(&mut self, text: &'t str) -> Option<Value<'t>> {
        self.skip_whitespace();
        let literal = |word: &str, value: bool| {
            self.bytes[self.at..]
                .starts_with(word.as_bytes())
                .then_some((word.len(), Value::Bool(value)))
        };
        let bool_value = match self.bytes.get(self.at)? {
            b'"' => return self.string(text).map(Value::Str),
            b't' => literal("true", true),
            b'f' => literal("false", false),
            _ => None,
        };
        let (len, value) = bool_value?;
        self.at += len;
        Some(value)
    }

    /// A string token without escapes or control characters, as a slice of
    /// `text` (the same bytes as `self.bytes`).
    fn string<'t>(&mut self, text: &'t str) -> Option<&'t str> {
        self.expect(b'"')?;
        let start = self.at;
        let rest = self.bytes.get(start..)?;
        let len = rest
            .iter()
            .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        // Both ends sit next to an ASCII quote, so on char boundaries.
        text.get(start..start + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 3] = ["id", "from", "amount"];

    #[test]
    fn reads_the_plain_form_and_whitespace() {
        let bytes = br#" { "amount" : "1.50" ,"id":"x",
            "from":"acc-1"}	"#;
        assert_eq!(string_fields(bytes, &NAMES), Some(["x", "acc-1", "1.50"]));
    }

    #[test]
    fn leaves_everything_else_to_serde() {
        for bytes in [
            &br#"{"id":"x","from":"a\"b","amount":"1"}"#[..],
            br#"{"id":"x","from":"a","amount":1}"#,
            br#"{"id":"x","from":"a"}"#,
            br#"{"id":"x","from":"a","amount":"1","id":"y"}"#,
            br#"{"id":"x","from":"a","amount":"1","memo":"m"}"#,
            br#"{"id":"x","from":"a","amount":"1"} x"#,
            br#"{"id":"x","from":"a","amount":"1",}"#,
            br#"{"id":"x","from":"a	b","amount":"1"}"#,
            br#"["id","x"]"#,
            b"{\"id\":\"\xff\",\"from\":\"a\",\"amount\":\"1\"}",
            b"",
        ] {
            assert_eq!(
                string_fields(bytes, &NAMES),
                None,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
