//! Is a webhook's body JSON? A validator that hands the bytes it has passed
//! to the signature check as it goes.
//!
//! A webhook's body is checked twice over: its HMAC-SHA256 (SHA-NI, about
//! 3 µs for GitHub's usual 6 KiB) and its JSON grammar (about 2 µs). Run
//! one after the other, the CPU mostly waits: each SHA-256 block is one long
//! chain of dependent instructions that leaves the core's other ports idle,
//! and a parser's branches and byte compares are exactly what could fill
//! them. So [`validate`] feeds the body to the hash one 64-byte block ahead
//! of where it is parsing, and the two interleave: the check costs about a
//! fifth less than hash-then-parse (`docs/performance-notes.md`, 25th
//! session). `serde_json` cannot be paused every 64 bytes, hence this file.
//!
//! What it accepts is exactly what `serde_json::from_slice::<IgnoredAny>`
//! accepts (RFC 8259's grammar: one value, whitespace around it, any
//! `\u` escape of four hex digits, no depth limit) — the tests compare the
//! two on generated and mutated documents. It checks grammar only: that the
//! bytes are UTF-8 is the caller's check (`std::str::from_utf8`).

use std::fmt;

/// The piece of the body the hash is fed at a time: one SHA-256 block.
/// Smaller pieces overlap better (128 and 256 bytes measured slower).
const BLOCK: usize = 64;

/// Where and why a body is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    reason: &'static str,
    /// Byte offset of the fault.
    at: usize,
    line: usize,
    column: usize,
}

impl JsonError {
    /// The byte offset where the text stopped being JSON.
    pub fn offset(&self) -> usize {
        self.at
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at line {}, column {}", self.reason, self.line, self.column)
    }
}

impl std::error::Error for JsonError {}

/// Checks that `text` is one JSON value, calling `feed` with consecutive
/// pieces of `text` that together are all of it, in order, each byte once —
/// also when the text is refused, so that a hash fed this way is complete
/// either way.
pub fn validate(text: &[u8], feed: impl FnMut(&[u8])) -> Result<(), JsonError> {
    let mut parser = Parser { text, at: 0, fed: 0, feed };
    let checked = parser.value();
    if parser.fed < text.len() {
        (parser.feed)(&text[parser.fed..]);
    }
    checked.map_err(|reason| {
        let at = parser.at.min(text.len());
        let before = &text[..at];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
        JsonError { reason, at, line, column }
    })
}

/// Which container a value is inside.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    Array,
    Object,
}

struct Parser<'t, F> {
    text: &'t [u8],
    /// The next byte to parse.
    at: usize,
    /// How much of `text` went to `feed`: always whole blocks, ahead of `at`.
    fed: usize,
    feed: F,
}

impl<F: FnMut(&[u8])> Parser<'_, F> {
    /// Keeps the hash a block ahead of the parser.
    #[inline(always)]
    fn pace(&mut self) {
        if self.at >= self.fed {
            self.feed_next();
        }
    }

    #[inline(never)]
    fn feed_next(&mut self) {
        let end = ((self.at / BLOCK + 1) * BLOCK).min(self.text.len());
        if end > self.fed {
            (self.feed)(&self.text[self.fed..end]);
            self.fed = end;
        }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    #[inline(always)]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// The whole text: one value, and nothing after it but whitespace.
    /// Containers are tracked on a stack of frames rather than by recursion,
    /// so a deeply nested body cannot exhaust the thread's stack.
    fn value(&mut self) -> Result<(), &'static str> {
        let mut frames: Vec<Frame> = Vec::with_capacity(16);
        'value: loop {
            self.pace();
            self.skip_whitespace();
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    self.string()?;
                }
                // Objects and arrays open alike but stay two arms: one arm
                // that picks the frame and its closing byte measured 0.12 µs
                // slower per 6 KiB webhook in the one pass with the HMAC.
                Some(b'{') => {
                    self.at += 1;
                    self.skip_whitespace();
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                    } else {
                        frames.push(Frame::Object);
                        self.key()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    self.at += 1;
                    self.skip_whitespace();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                    } else {
                        frames.push(Frame::Array);
                        continue 'value;
                    }
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(_) | None => return Err("expected a value"),
            }
            // A value ended: close containers until one goes on.
            loop {
                self.skip_whitespace();
                match (frames.last(), self.peek()) {
                    (None, None) => return Ok(()),
                    (None, Some(_)) => return Err("trailing characters after the value"),
                    (Some(frame), Some(b',')) => {
                        self.at += 1;
                        if *frame == Frame::Object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                    (Some(Frame::Array), Some(b']')) | (Some(Frame::Object), Some(b'}')) => {
                        self.at += 1;
                        frames.pop();
                    }
                    (Some(Frame::Array), _) => return Err("expected ',' or ']'"),
                    (Some(Frame::Object), _) => return Err("expected ',' or '}'"),
                }
            }
        }
    }

    /// An object's key and its colon.
    #[inline(always)]
    fn key(&mut self) -> Result<(), &'static str> {
        self.skip_whitespace();
        if self.peek() != Some(b'"') {
            return Err("expected a string key");
        }
        self.at += 1;
        self.string()?;
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return Err("expected ':'");
        }
        self.at += 1;
        Ok(())
    }

    /// The rest of a string, from just past its opening quote.
    #[inline(always)]
    fn string(&mut self) -> Result<(), &'static str> {
        const ONES: u64 = u64::MAX / 255;
        loop {
            // Eight bytes at a time to the next quote, backslash or control
            // character (the borrow in each subtraction can only mark bytes
            // after a true match, so the lowest mark is the first).
            while let Some(eight) = self.text[self.at..].first_chunk::<8>() {
                let bytes = u64::from_le_bytes(*eight);
                let control = bytes.wrapping_sub(ONES * 0x20) & !bytes;
                let quote = bytes ^ (ONES * u64::from(b'"'));
                let quote = quote.wrapping_sub(ONES) & !quote;
                let backslash = bytes ^ (ONES * u64::from(b'\\'));
                let backslash = backslash.wrapping_sub(ONES) & !backslash;
                let marks = (control | quote | backslash) & (ONES << 7);
                if marks != 0 {
                    self.at += marks.trailing_zeros() as usize / 8;
                    break;
                }
                self.at += 8;
                self.pace();
            }
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 1,
                        Some(b'u') => {
                            self.at += 1;
                            match self.text.get(self.at..self.at + 4) {
                                Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => self.at += 4,
                                _ => return Err("invalid \\u escape"),
                            }
                        }
                        _ => return Err("invalid escape"),
                    }
                }
                Some(0x00..=0x1f) => return Err("control character in a string"),
                Some(_) => self.at += 1,
                None => return Err("unterminated string"),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), &'static str> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err("invalid number: leading zero");
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err("invalid number: no digit after the decimal point");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err("invalid number: no digit in the exponent");
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), &'static str> {
        match self.text[self.at..].starts_with(word) {
            true => {
                self.at += word.len();
                Ok(())
            }
            false => Err("expected a value"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn serde_accepts(text: &[u8]) -> bool {
        serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
    }

    /// Validates `text` and checks that the pieces fed are all of it, in order.
    fn check(text: &[u8]) -> Result<(), JsonError> {
        let mut fed = Vec::with_capacity(text.len());
        let checked = validate(text, |piece| fed.extend_from_slice(piece));
        assert_eq!(fed, text, "the pieces fed are not the text");
        checked
    }

    fn agrees_with_serde(text: &[u8]) -> Result<(), TestCaseError> {
        let ours = check(text);
        prop_assert_eq!(ours.is_ok(), serde_accepts(text), "{:?}: ours {:?}", String::from_utf8_lossy(text), ours);
        Ok(())
    }

    #[test]
    fn valid_documents_are_accepted() {
        for text in [
            "{}",
            "[]",
            " \t\r\n{ \"a\" : [ 1 , -0.5e+10 , true , false , null , \"\\u00e9\\n\\\"\" ] } \n",
            "\"a top-level string\"",
            "0",
            "-0",
            "1E5",
            "12.0e-3",
            "[[[[[]]]]]",
            "{\"\":{\"\":{}}}",
            "\"\\/\\b\\f\\r\\t\\\\\\uD800\"",
            "\"héllo ✓\"",
        ] {
            assert_eq!(check(text.as_bytes()), Ok(()), "{text}");
            assert!(serde_accepts(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn invalid_documents_are_refused_with_a_place() {
        for (text, reason) in [
            ("", "expected a value at line 1, column 1"),
            ("   ", "expected a value at line 1, column 4"),
            ("{nope", "expected a string key at line 1, column 2"),
            ("[1,]", "expected a value at line 1, column 4"),
            ("{\"a\":1,}", "expected a string key at line 1, column 8"),
            ("{\"a\" 1}", "expected ':' at line 1, column 6"),
            ("[1 2]", "expected ',' or ']' at line 1, column 4"),
            ("{\"a\":1]", "expected ',' or '}' at line 1, column 7"),
            ("{}\n{}", "trailing characters after the value at line 2, column 1"),
            ("01", "invalid number: leading zero at line 1, column 2"),
            ("1.", "invalid number: no digit after the decimal point at line 1, column 3"),
            ("1e+", "invalid number: no digit in the exponent at line 1, column 4"),
            ("-", "invalid number at line 1, column 2"),
            ("tru", "expected a value at line 1, column 1"),
            ("\"abc", "unterminated string at line 1, column 5"),
            ("\"a\tb\"", "control character in a string at line 1, column 3"),
            ("\"\\x\"", "invalid escape at line 1, column 3"),
            ("\"\\u12g4\"", "invalid \\u escape at line 1, column 4"),
            ("[", "expected a value at line 1, column 2"),
            ("[\n\n", "expected a value at line 3, column 1"),
        ] {
            let refused = check(text.as_bytes()).expect_err(text);
            assert_eq!(refused.to_string(), reason, "{text:?}");
            assert!(!serde_accepts(text.as_bytes()), "{text:?}");
        }
    }

    #[test]
    fn every_vendored_webhook_is_accepted_and_every_truncation_refused() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/github");
        let mut seen = 0;
        for event in std::fs::read_dir(&fixtures).expect("fixtures") {
            let event = event.expect("event").path();
            if !event.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(event).expect("event dir") {
                let text = std::fs::read(file.expect("file").path()).expect("fixture");
                assert_eq!(check(&text), Ok(()));
                // Cut inside the document (the last bytes may be whitespace).
                let end = text.iter().rposition(|b| !b.is_ascii_whitespace()).expect("not blank");
                for cut in (0..end).step_by(97) {
                    assert!(check(&text[..cut]).is_err(), "accepted a prefix of {cut} bytes");
                }
                seen += 1;
            }
        }
        assert!(seen > 80, "only {seen} fixtures");
    }

    #[test]
    fn nesting_far_deeper_than_a_call_stack_is_handled() {
        let deep = format!("{}{}", "[".repeat(1 << 20), "]".repeat(1 << 20));
        assert_eq!(check(deep.as_bytes()), Ok(()));
        assert!(check(&deep.as_bytes()[..deep.len() - 1]).is_err());
    }

    /// A JSON value as text, with whitespace and escapes where they may go.
    fn json_text() -> impl Strategy<Value = String> {
        let space = prop::sample::select(vec!["", "", " ", "\n", "\t ", "\r\n"]);
        let string = prop::collection::vec(
            prop_oneof![
                "[a-zA-Z0-9 é✓]{1,12}",
                Just("\\\"".to_string()),
                Just("\\\\".to_string()),
                Just("\\n".to_string()),
                Just("\\u00E9".to_string()),
                Just("\\ud83d\\ude00".to_string()),
            ],
            0..4,
        )
        .prop_map(|parts| format!("\"{}\"", parts.concat()));
        let number = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| format!("{x:e}")),
            Just("-0.0E+00".to_string()),
        ];
        let leaf = prop_oneof![
            string.clone(),
            number,
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            let (space, string) = (space.clone(), string.clone());
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..6), space.clone())
                    .prop_map(|(items, s)| format!("[{s}{}{s}]", items.join(&format!("{s},{s}")))),
                (prop::collection::vec((string, inner), 0..6), space).prop_map(|(fields, s)| {
                    let fields: Vec<String> = fields.into_iter().map(|(k, v)| format!("{k}{s}:{s}{v}")).collect();
                    format!("{{{s}{}{s}}}", fields.join(&format!(",{s}")))
                }),
            ]
        })
    }

    /// A byte edit that JSON is sensitive to.
    fn edit() -> impl Strategy<Value = (usize, u8, u8)> {
        let bytes = prop::sample::select(b"{}[]\",:\\ \t\n-+.0123456789eEtrufalsn\x01\x1fA".to_vec());
        (any::<usize>(), 0u8..3, bytes)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn generated_json_is_accepted(text in json_text()) {
            prop_assert!(serde_accepts(text.as_bytes()), "{}", text);
            prop_assert_eq!(check(text.as_bytes()), Ok(()));
        }

        #[test]
        fn edited_json_is_judged_as_serde_json_judges_it(
            text in json_text(),
            edits in prop::collection::vec(edit(), 1..4),
        ) {
            let mut bytes = text.into_bytes();
            for (at, how, byte) in edits {
                let at = at % (bytes.len() + 1);
                match how {
                    0 => bytes.insert(at, byte),
                    1 if at < bytes.len() => { bytes.remove(at); }
                    _ if at < bytes.len() => bytes[at] = byte,
                    _ => bytes.push(byte),
                }
            }
            agrees_with_serde(&bytes)?;
        }

        #[test]
        fn arbitrary_bytes_are_judged_as_serde_json_judges_them(
            bytes in prop::collection::vec(prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\",:\\ 0123456789.eE-+tfn".to_vec())], 0..64),
        ) {
            agrees_with_serde(&bytes)?;
        }
    }
}
