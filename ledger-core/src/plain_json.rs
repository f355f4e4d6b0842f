//! A shortcut past serde_json for the form nearly every message has: one
//! JSON object whose values are all plain strings (no escapes), each of a
//! known set of fields exactly once.
//!
//! Decoding a transfer through serde_json's generic path took about 4,000
//! instructions, half of the state machine's work on the durable core
//! (row 4 of `txledger-bench`, under callgrind). This reader does the same
//! for that form in a fraction of it. It decides nothing: anything it does
//! not recognise (an escape, a number, a nested value, a field missing,
//! repeated or unknown, malformed JSON) returns `None`, and the caller then
//! asks serde_json, which accepts or refuses it and says why. Where it does
//! answer, serde_json would have read the same strings; the property test
//! below holds it to that on generated messages of every shape.

/// The values of `names`, in that order, when `bytes` is an object of
/// exactly those fields, each a string without escapes or control
/// characters, with any JSON whitespace between tokens.
pub(crate) fn string_fields<'a, const N: usize>(
    bytes: &'a [u8],
    names: &[&str; N],
) -> Option<[&'a str; N]> {
    // Validating the whole message at once is cheap for ASCII, and makes
    // every slice taken below a valid `str`.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut reader = Reader {
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut values: [Option<&'a str>; N] = [None; N];
    reader.expect(b'{')?;
    for seen in 0.. {
        let key = reader.string(text)?;
        reader.expect(b':')?;
        let value = reader.string(text)?;
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
    if reader.at != reader.bytes.len() {
        return None;
    }
    let mut out = [""; N];
    for (slot, value) in out.iter_mut().zip(values) {
        *slot = value?;
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
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    const NAMES: [&str; 3] = ["id", "from", "amount"];

    /// What serde_json makes of the same message, for the fields of NAMES.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Serde<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(borrow)]
        from: Cow<'a, str>,
        #[serde(borrow)]
        amount: Cow<'a, str>,
    }

    fn by_serde(bytes: &[u8]) -> Option<[String; 3]> {
        let read: Serde = serde_json::from_slice(bytes).ok()?;
        Some([read.id.into(), read.from.into(), read.amount.into()])
    }

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

    /// A token of a message: mostly well-formed pieces, sometimes not.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z0-9. -]{0,6}".prop_map(|s| format!("{s:?}")),
            1 => Just(r#""a\"b""#.to_owned()),
            1 => Just(r#""\u0069d""#.to_owned()),
            1 => Just("12".to_owned()),
            1 => Just("null".to_owned()),
            1 => Just("\"é\"".to_owned()),
            1 => Just("\"\t\"".to_owned()),
        ]
    }

    /// Changes that may make a message something else than the plain form.
    #[derive(Debug, Clone)]
    enum Change {
        Value(usize, String),
        Key(usize, String),
        Repeat(usize),
        Drop(usize),
        Add(String, String),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0..3usize, piece()).prop_map(|(i, v)| Change::Value(i, v)),
            (0..3usize, piece()).prop_map(|(i, k)| Change::Key(i, k)),
            (0..3usize).prop_map(Change::Repeat),
            (0..3usize).prop_map(Change::Drop),
            (piece(), piece()).prop_map(|(k, v)| Change::Add(k, v)),
        ]
    }

    /// A plain object of NAMES in any order, with up to two changes, any
    /// whitespace, and sometimes something after it.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        let space = prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n"]);
        (
            Just(NAMES.to_vec()).prop_shuffle(),
            prop::collection::vec("[a-z0-9. -]{0,6}", 3),
            prop::collection::vec(change(), 0..3),
            prop::collection::vec(space.clone(), 4),
            prop::sample::select(vec!["", "", "", ",", "}", " x", "{"]),
        )
            .prop_map(|(order, values, changes, spaces, tail)| {
                let mut fields: Vec<(String, String)> = order
                    .iter()
                    .zip(&values)
                    .map(|(name, value)| (format!("{name:?}"), format!("{value:?}")))
                    .collect();
                for change in changes {
                    let n = fields.len();
                    match change {
                        Change::Value(i, v) if i < n => fields[i].1 = v,
                        Change::Key(i, k) if i < n => fields[i].0 = k,
                        Change::Repeat(i) if i < n => fields.push(fields[i].clone()),
                        Change::Drop(i) if i < n => {
                            fields.remove(i);
                        }
                        Change::Add(k, v) => fields.push((k, v)),
                        _ => {}
                    }
                }
                let [a, b, c, d] = [spaces[0], spaces[1], spaces[2], spaces[3]];
                let body: Vec<String> = fields
                    .iter()
                    .map(|(key, value)| format!("{a}{key}{b}:{c}{value}{d}"))
                    .collect();
                format!("{d}{{{}}}{a}{tail}", body.join(",")).into_bytes()
            })
    }

    proptest! {
        #[test]
        fn where_it_answers_serde_reads_the_same(bytes in message()) {
            if let Some(read) = string_fields(&bytes, &NAMES) {
                let expected = by_serde(&bytes);
                prop_assert_eq!(Some(read.map(str::to_owned)), expected);
            }
        }

        #[test]
        fn it_answers_for_every_plain_object_of_the_fields(
            values in prop::collection::vec("[a-zA-Z0-9:._-]{0,12}", 3),
            order in Just(NAMES.to_vec()).prop_shuffle(),
        ) {
            let object: BTreeMap<&str, &str> = NAMES
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .collect();
            let body: Vec<String> = order
                .iter()
                .map(|name| format!("{name:?}:{:?}", object[name]))
                .collect();
            let bytes = format!("{{{}}}", body.join(",")).into_bytes();
            let read = string_fields(&bytes, &NAMES);
            prop_assert_eq!(read.map(|r| r.map(str::to_owned)), by_serde(&bytes));
        }
    }
}
