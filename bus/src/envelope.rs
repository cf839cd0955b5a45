//! The envelope: every message on every queue, and the dead-letter entry.
//!
//! The wire form is a MessagePack map with string keys (SPEC §3) so that any
//! language can read and write it. Encoding and decoding are written against
//! `rmp`/`rmpv` directly rather than derived, for three reasons:
//!
//! - the payload stays the exact MessagePack bytes it arrived as ([`Bytes`]),
//!   so forwarding a message never re-encodes its body;
//! - unknown fields are skipped whatever their type (rolling deploys);
//! - a malformed message yields an error that names the field at fault, which
//!   becomes the dead letter's reason.

use bytes::Bytes;
pub use compact_str::CompactString;
use rmpv::ValueRef;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The only envelope format version this code writes and accepts.
pub const FORMAT_VERSION: u64 = 1;

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique message id; also what dead letters and leases are addressed by.
    pub id: String,
    /// Payload type, e.g. `github.webhook`, `sync.operation`. Kept inline
    /// (kinds are short): every stage makes a message of some kind, and a
    /// heap string per message was a measurable share of the bus's time.
    pub kind: CompactString,
    /// Failed deliveries so far; decides backoff and when the message goes dead.
    pub attempts: u32,
    /// Milliseconds since the Unix epoch when the message was first enqueued.
    pub enqueued_at: i64,
    /// Carried unchanged from the webhook through every stage so one event can
    /// be followed across processes.
    pub trace_id: String,
    /// Ordering key: messages with the same key are handled one at a time.
    pub key: Option<String>,
    /// How many times the dead-letter sweep has re-driven this message. Not in
    /// the SPEC's table; written only when non-zero, ignored by older readers.
    pub redrives: u32,
    /// The payload map, as MessagePack bytes.
    pub payload: Bytes,
}

/// Why bytes could not be read as an envelope. The text is a dead letter's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Why a payload could not be turned into or out of a typed value.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload does not match {ty}: {source}")]
    Decode {
        ty: &'static str,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("payload could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("payload must encode as a MessagePack map")]
    NotAMap,
}

impl Envelope {
    /// A fresh message (attempt 0, enqueued now) with its own trace.
    pub fn new(kind: impl Into<CompactString>, payload: Bytes) -> Self {
        let now = coarse_now_ms();
        let id = id_at(now);
        Envelope {
            trace_id: id.clone(),
            id,
            kind: kind.into(),
            attempts: 0,
            enqueued_at: now,
            key: None,
            redrives: 0,
            payload,
        }
    }

    /// A fresh message whose payload is `value` encoded with named fields.
    pub fn with_payload<T: Serialize>(kind: impl Into<CompactString>, value: &T) -> Result<Self, PayloadError> {
        Ok(Self::new(kind, encode_payload(value)?))
    }

    /// Sets the ordering key.
    pub fn keyed(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the trace id (a message caused by another carries its trace).
    pub fn traced(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = trace_id.into();
        self
    }

    /// Decodes the payload as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        rmp_serde::from_slice(&self.payload)
            .map_err(|source| PayloadError::Decode { ty: std::any::type_name::<T>(), source })
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 128);
        self.encode_into(&mut out, 0);
        out
    }

    /// Writes the wire form to `out` (a Redis command's argument, say);
    /// [`Envelope::encoded_len`] bytes at most.
    pub fn encode_to<W: std::io::Write>(&self, out: &mut W) {
        self.encode_into(out, 0);
    }

    /// An upper bound of the wire form's length, for sizing buffers.
    pub fn encoded_len(&self) -> usize {
        // Map header, field names, markers and length prefixes: at most 106.
        128 + self.id.len()
            + self.kind.len()
            + self.trace_id.len()
            + self.key.as_ref().map_or(0, String::len)
            + self.payload.len()
    }

    /// Writes the envelope map header announcing `extra` more entries after
    /// the envelope's own fields, then the fields. Written to memory, so
    /// nothing can fail.
    fn encode_into<W: std::io::Write>(&self, out: &mut W, extra: u32) {
        let fields = 8 + u32::from(self.redrives > 0) + extra;
        let _ = rmp::encode::write_map_len(out, fields);
        put_str(out, "v");
        put_uint(out, FORMAT_VERSION);
        put_str(out, "id");
        put_str(out, &self.id);
        put_str(out, "kind");
        put_str(out, &self.kind);
        put_str(out, "attempts");
        put_uint(out, u64::from(self.attempts));
        put_str(out, "enqueued_at");
        let _ = rmp::encode::write_sint(out, self.enqueued_at);
        put_str(out, "trace_id");
        put_str(out, &self.trace_id);
        put_str(out, "key");
        match &self.key {
            Some(key) => put_str(out, key),
            None => {
                let _ = rmp::encode::write_nil(out);
            }
        }
        if self.redrives > 0 {
            put_str(out, "redrives");
            put_uint(out, u64::from(self.redrives));
        }
        put_str(out, "payload");
        let _ = out.write_all(&self.payload);
    }

    /// Reads an envelope; unknown fields are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        read_map(bytes)?.into_envelope()
    }
}

/// A message that went dead, as stored on `<queue>:dead`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub content: DeadContent,
    /// Why it went dead, for the operator.
    pub reason: String,
    /// When it went dead, ms since epoch.
    pub dead_at: i64,
}

/// What a dead letter holds.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadContent {
    /// A message that failed or was refused.
    Envelope(Envelope),
    /// Bytes that were never an envelope, kept exactly as received.
    Raw(Bytes),
}

impl DeadLetter {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.content {
            DeadContent::Envelope(envelope) => envelope.encode_into(&mut out, 2),
            DeadContent::Raw(raw) => {
                let _ = rmp::encode::write_map_len(&mut out, 3);
                put_str(&mut out, "raw");
                let _ = rmp::encode::write_bin(&mut out, raw);
            }
        }
        put_str(&mut out, "dead_reason");
        put_str(&mut out, &self.reason);
        put_str(&mut out, "dead_at");
        let _ = rmp::encode::write_sint(&mut out, self.dead_at);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let fields = read_map(bytes)?;
        let reason = fields.dead_reason.clone().unwrap_or_default();
        let dead_at = fields.dead_at.unwrap_or(0);
        let content = match &fields.raw {
            Some(raw) => DeadContent::Raw(raw.clone()),
            None => DeadContent::Envelope(fields.into_envelope()?),
        };
        Ok(DeadLetter { content, reason, dead_at })
    }

    /// The id an operator addresses this entry by: the message id, or for raw
    /// bytes a content hash prefixed `raw-`.
    pub fn id(&self) -> String {
        match &self.content {
            DeadContent::Envelope(envelope) => envelope.id.clone(),
            DeadContent::Raw(raw) => format!("raw-{:016x}", fnv1a(raw)),
        }
    }
}

impl Envelope {
    /// The message as JSON for people (`hookbus peek`, the admin page): its
    /// fields, and the payload decoded by [`payload_to_json`].
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "kind": self.kind.as_str(),
            "attempts": self.attempts,
            "enqueued_at": self.enqueued_at,
            "trace_id": self.trace_id,
            "key": self.key,
            "redrives": self.redrives,
            "payload": payload_to_json(&self.payload),
        })
    }
}

impl DeadLetter {
    /// The dead letter as JSON for people: the envelope's fields (or `raw`,
    /// the bytes as text, for what never was an envelope) plus `dead_reason`
    /// and `dead_at`, as stored.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = match &self.content {
            DeadContent::Envelope(e) => e.to_json(),
            DeadContent::Raw(raw) => serde_json::json!({ "id": self.id(), "raw": String::from_utf8_lossy(raw) }),
        };
        value["dead_reason"] = serde_json::json!(self.reason);
        value["dead_at"] = serde_json::json!(self.dead_at);
        value
    }
}

/// Encodes a payload value with named fields; it must be a map.
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Bytes, PayloadError> {
    encode_payload_sized(value, 0)
}

/// As [`encode_payload`], into a buffer of `capacity` bytes to start with: a
/// payload carrying a large body (a webhook's) is then written once instead
/// of being copied again each time the buffer grows.
pub fn encode_payload_sized<T: Serialize>(value: &T, capacity: usize) -> Result<Bytes, PayloadError> {
    let mut bytes = Vec::with_capacity(capacity);
    rmp_serde::encode::write_named(&mut bytes, value)?;
    if !is_map_marker(bytes.first().copied()) {
        return Err(PayloadError::NotAMap);
    }
    Ok(Bytes::from(bytes))
}

/// Converts a payload to JSON for people (CLI, admin page): binary values that
/// are UTF-8 are shown as text.
pub fn payload_to_json(payload: &[u8]) -> serde_json::Value {
    let mut rd = payload;
    match rmpv::decode::read_value_ref(&mut rd) {
        Ok(value) => value_to_json(&value),
        Err(err) => serde_json::Value::String(format!("<undecodable payload: {err}>")),
    }
}

fn value_to_json(value: &ValueRef<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        ValueRef::Nil => J::Null,
        ValueRef::Boolean(b) => J::Bool(*b),
        ValueRef::Integer(i) => i.as_i64().map(J::from).or_else(|| i.as_u64().map(J::from)).unwrap_or(J::Null),
        ValueRef::F32(f) => J::from(f64::from(*f)),
        ValueRef::F64(f) => J::from(*f),
        ValueRef::String(s) => J::String(
            s.as_str().map(str::to_owned).unwrap_or_else(|| String::from_utf8_lossy(s.as_bytes()).into_owned()),
        ),
        ValueRef::Binary(b) => match std::str::from_utf8(b) {
            Ok(text) => J::String(text.to_owned()),
            Err(_) => J::String(format!("<{} bytes of binary>", b.len())),
        },
        ValueRef::Array(items) => J::Array(items.iter().map(value_to_json).collect()),
        ValueRef::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        ValueRef::String(s) => s.as_str().unwrap_or("?").to_owned(),
                        other => value_to_json(other).to_string(),
                    };
                    (key, value_to_json(v))
                })
                .collect(),
        ),
        ValueRef::Ext(tag, data) => J::String(format!("<ext {tag}: {} bytes>", data.len())),
    }
}

/// A new unique message id (UUID v7: time-ordered, so ids sort by creation).
/// The random bits come from the thread-local generator, not a system call
/// per id: ids are made once per message per stage.
pub fn new_id() -> String {
    id_at(now_ms())
}

fn id_at(now_ms: i64) -> String {
    // Ids need to be unique, not unguessable: a fast generator per thread,
    // seeded from the OS, instead of the cryptographic one (which cost the
    // in-memory pipeline a few percent of its time).
    thread_local! {
        static RNG: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::SeedableRng::from_os_rng());
    }
    let random: u128 = RNG.with(|rng| rand::Rng::random(&mut *rng.borrow_mut()));
    // RFC 9562 layout: 48 bits of milliseconds, version 7, 12 random bits
    // (rand_a), variant 0b10, 62 random bits (rand_b). Put together and
    // written out here: the uuid crate's builder and formatter took as long
    // as everything else in making a message.
    let millis = u128::from(u64::try_from(now_ms).unwrap_or(0) & 0xffff_ffff_ffff);
    let rand_a = (random >> 64) & 0x0fff;
    let rand_b = random & 0x3fff_ffff_ffff_ffff;
    let bits = millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b;
    // Each byte's two digits go to a fixed place around the dashes: a loop
    // the compiler unrolls, without a dash test per byte (with the bounds
    // checks it kept, that made the formatting about 3 % of a stage's CPU in
    // the in-memory pipeline).
    let mut text = *b"00000000-0000-0000-0000-000000000000";
    for (byte, at) in bits.to_be_bytes().into_iter().zip(DIGITS_AT) {
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
    }
    // Only ASCII was written, so this never comes out empty.
    String::from_utf8(text.to_vec()).unwrap_or_default()
}

/// Where each of an id's 16 bytes starts in its 36-character text.
const DIGITS_AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Milliseconds since the Unix epoch from the kernel's coarse clock: the
/// time of its last tick (1 to 4 ms apart), so never later than
/// [`now_ms`]. What new messages are stamped with (`enqueued_at`, and the
/// id's time): it reads the time the kernel stored at its last tick rather
/// than the clock itself, and the precise read, once per message per
/// stage, was about a twentieth of the in-memory pipeline's CPU.
pub fn coarse_now_ms() -> i64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    now.tv_sec * 1_000 + now.tv_nsec / 1_000_000
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    // Seconds and milliseconds apart: `as_millis` divides a u128, and with
    // the checks of `duration_since` that was a third of this function's
    // time in a profile of the in-memory pipeline.
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => since.as_secs() as i64 * 1_000 + i64::from(since.subsec_millis()),
        Err(_) => 0,
    }
}

fn put_str<W: std::io::Write>(out: &mut W, s: &str) {
    let _ = rmp::encode::write_str(out, s);
}

fn put_uint<W: std::io::Write>(out: &mut W, n: u64) {
    let _ = rmp::encode::write_uint(out, n);
}

fn is_map_marker(byte: Option<u8>) -> bool {
    matches!(byte, Some(0x80..=0x8f | 0xde | 0xdf))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The fields of an envelope or dead-letter map, as read.
#[derive(Default)]
struct Fields {
    v: Option<u64>,
    id: Option<String>,
    kind: Option<CompactString>,
    attempts: Option<u32>,
    enqueued_at: Option<i64>,
    trace_id: Option<String>,
    key: Option<String>,
    redrives: Option<u32>,
    payload: Option<Bytes>,
    raw: Option<Bytes>,
    dead_reason: Option<String>,
    dead_at: Option<i64>,
}

impl Fields {
    fn into_envelope(self) -> Result<Envelope, DecodeError> {
        let missing = |name: &str| DecodeError(format!("envelope field `{name}` is missing"));
        let v = self.v.ok_or_else(|| missing("v"))?;
        if v != FORMAT_VERSION {
            return Err(DecodeError(format!(
                "envelope field `v` is {v}; this version of hookbus reads format {FORMAT_VERSION}"
            )));
        }
        let id = self.id.ok_or_else(|| missing("id"))?;
        if id.is_empty() {
            return Err(DecodeError("envelope field `id` is empty".into()));
        }
        Ok(Envelope {
            kind: self.kind.ok_or_else(|| missing("kind"))?,
            payload: self.payload.ok_or_else(|| missing("payload"))?,
            attempts: self.attempts.unwrap_or(0),
            enqueued_at: self.enqueued_at.unwrap_or(0),
            trace_id: self.trace_id.unwrap_or_else(|| id.clone()),
            key: self.key,
            redrives: self.redrives.unwrap_or(0),
            id,
        })
    }
}

fn read_map(bytes: &[u8]) -> Result<Fields, DecodeError> {
    let mut rd = bytes;
    let len = rmp::decode::read_map_len(&mut rd)
        .map_err(|_| DecodeError("not a MessagePack map (an envelope is a map with string keys)".into()))?;
    let mut fields = Fields::default();
    for _ in 0..len {
        let name = match rmpv::decode::read_value_ref(&mut rd) {
            Ok(ValueRef::String(s)) => {
                s.into_str().ok_or_else(|| DecodeError("envelope has a key that is not UTF-8".into()))?
            }
            Ok(_) => return Err(DecodeError("envelope has a key that is not a string".into())),
            Err(err) => return Err(DecodeError(format!("truncated or malformed MessagePack: {err}"))),
        };
        let before = rd;
        let value = rmpv::decode::read_value_ref(&mut rd)
            .map_err(|err| DecodeError(format!("envelope field `{name}` is truncated or malformed: {err}")))?;
        let raw_value = &before[..before.len() - rd.len()];
        let wrong = |want: &str| DecodeError(format!("envelope field `{name}` must be {want}"));
        match name {
            "v" => fields.v = Some(value.as_u64().ok_or_else(|| wrong("a positive integer"))?),
            "id" => fields.id = Some(as_string(&value).ok_or_else(|| wrong("a string"))?),
            "kind" => fields.kind = Some(as_str(&value).map(CompactString::from).ok_or_else(|| wrong("a string"))?),
            "attempts" => fields.attempts = Some(as_u32(&value).ok_or_else(|| wrong("a non-negative integer"))?),
            "enqueued_at" => fields.enqueued_at = Some(as_i64(&value).ok_or_else(|| wrong("an integer (ms)"))?),
            "trace_id" => fields.trace_id = Some(as_string(&value).ok_or_else(|| wrong("a string"))?),
            "key" => {
                fields.key = match value {
                    ValueRef::Nil => None,
                    _ => Some(as_string(&value).ok_or_else(|| wrong("a string or nil"))?),
                }
            }
            "redrives" => fields.redrives = Some(as_u32(&value).ok_or_else(|| wrong("a non-negative integer"))?),
            "payload" => {
                if !matches!(value, ValueRef::Map(_)) {
                    return Err(wrong("a map"));
                }
                fields.payload = Some(Bytes::copy_from_slice(raw_value));
            }
            "raw" => match value {
                ValueRef::Binary(b) => fields.raw = Some(Bytes::copy_from_slice(b)),
                ValueRef::String(s) => fields.raw = Some(Bytes::copy_from_slice(s.as_bytes())),
                _ => return Err(wrong("binary")),
            },
            "dead_reason" => fields.dead_reason = as_string(&value),
            "dead_at" => fields.dead_at = as_i64(&value),
            _ => {} // unknown: written by a newer version, ignored
        }
    }
    if !rd.is_empty() {
        return Err(DecodeError(format!("{} unexpected bytes after the envelope map", rd.len())));
    }
    Ok(fields)
}

fn as_string(value: &ValueRef<'_>) -> Option<String> {
    as_str(value).map(str::to_owned)
}

fn as_str<'a>(value: &'a ValueRef<'a>) -> Option<&'a str> {
    match value {
        ValueRef::String(s) => s.as_str(),
        _ => None,
    }
}

fn as_i64(value: &ValueRef<'_>) -> Option<i64> {
    match value {
        ValueRef::Integer(i) => i.as_i64(),
        _ => None,
    }
}

fn as_u32(value: &ValueRef<'_>) -> Option<u32> {
    value.as_u64().and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: "m-1".into(),
            kind: "test.kind".into(),
            attempts: 2,
            enqueued_at: 1_700_000_000_000,
            trace_id: "t-1".into(),
            key: Some("k".into()),
            redrives: 0,
            payload: encode_payload(&serde_json::json!({"a": 1, "b": "x"})).expect("map payload"),
        }
    }

    #[test]
    fn the_coarse_clock_is_never_ahead_and_a_tick_behind_at_most() {
        for _ in 0..1_000 {
            // Bracketed by precise reads, so a preemption in between can
            // only widen the window, never fail the test.
            let before = now_ms();
            let coarse = coarse_now_ms();
            let after = now_ms();
            assert!(coarse <= after, "coarse {coarse} ahead of {after}");
            assert!(coarse >= before - 20, "coarse {coarse} more than a tick behind {before}");
        }
    }

    #[test]
    fn ids_are_uuid_v7_of_their_millisecond_and_unique() {
        let at = 1_764_580_000_123;
        let ids: Vec<String> = (0..10_000).map(|_| id_at(at)).collect();
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 7, "{id}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{id}");
            let (secs, nanos) = parsed.get_timestamp().expect("v7 timestamp").to_unix();
            assert_eq!(secs as i64 * 1_000 + i64::from(nanos / 1_000_000), at, "{id}");
            assert_eq!(id, &parsed.hyphenated().to_string(), "lower-case, hyphenated");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Later milliseconds sort later.
        assert!(id_at(at) < id_at(at + 1));
    }

    #[test]
    fn envelope_round_trips() {
        let env = sample();
        assert_eq!(Envelope::decode(&env.encode()), Ok(env));
    }

    #[test]
    fn encoded_len_bounds_the_wire_form() {
        let mut env = sample();
        env.redrives = u32::MAX;
        env.attempts = u32::MAX;
        env.enqueued_at = i64::MIN;
        for long in [0, 40, 300, 70_000] {
            env.id = "i".repeat(long);
            env.kind = "k".repeat(long).into();
            env.trace_id = "t".repeat(long);
            env.key = Some("y".repeat(long));
            let mut written = Vec::new();
            env.encode_to(&mut written);
            assert_eq!(written, env.encode());
            assert!(written.len() <= env.encoded_len(), "{} > {}", written.len(), env.encoded_len());
        }
    }

    #[test]
    fn redrives_are_written_only_when_nonzero() {
        let mut env = sample();
        assert!(!env.encode().windows(8).any(|w| w == b"redrives"));
        env.redrives = 3;
        assert_eq!(Envelope::decode(&env.encode()).map(|e| e.redrives), Ok(3));
    }

    /// Bytes written by hand from the MessagePack spec, the way a producer in
    /// another language would: fields in a different order, an unknown field,
    /// and the envelope still reads.
    #[test]
    fn decodes_envelope_written_by_hand_from_the_msgpack_spec() {
        let mut b: Vec<u8> = vec![0x89]; // fixmap, 9 entries
        let s = |b: &mut Vec<u8>, text: &str| {
            b.push(0xa0 | text.len() as u8); // fixstr
            b.extend_from_slice(text.as_bytes());
        };
        s(&mut b, "payload");
        b.push(0x81); // fixmap, 1 entry
        s(&mut b, "n");
        b.push(0x2a); // positive fixint 42
        s(&mut b, "kind");
        s(&mut b, "demo.ping");
        s(&mut b, "v");
        b.push(0x01);
        s(&mut b, "id");
        s(&mut b, "abc-123");
        s(&mut b, "attempts");
        b.push(0x00);
        s(&mut b, "enqueued_at");
        b.push(0xcf); // uint 64
        b.extend_from_slice(&1_700_000_000_123u64.to_be_bytes());
        s(&mut b, "trace_id");
        s(&mut b, "trace-9");
        s(&mut b, "key");
        b.push(0xc0); // nil
        s(&mut b, "from_python"); // unknown field: ignored
        b.push(0x92); // fixarray of 2
        b.push(0xc3); // true
        b.push(0xcb); // float 64
        b.extend_from_slice(&1.5f64.to_be_bytes());

        let env = Envelope::decode(&b).expect("hand-written envelope decodes");
        assert_eq!(env.id, "abc-123");
        assert_eq!(env.kind, "demo.ping");
        assert_eq!(env.attempts, 0);
        assert_eq!(env.enqueued_at, 1_700_000_000_123);
        assert_eq!(env.trace_id, "trace-9");
        assert_eq!(env.key, None);
        #[derive(serde::Deserialize)]
        struct P {
            n: u8,
        }
        assert_eq!(env.payload_as::<P>().expect("payload").n, 42);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(Envelope::decode(b"hello").is_err());
        assert!(Envelope::decode(&[]).is_err());
        let err = Envelope::decode(&[0x81, 0xa2, b'i', b'd', 0x05]).expect_err("id must be a string");
        assert_eq!(err.0, "envelope field `id` must be a string");
        let mut truncated = sample().encode();
        truncated.truncate(truncated.len() - 3);
        assert!(Envelope::decode(&truncated).is_err());
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut bytes = sample().encode();
        // "v" is the first field; its value follows the 0xa1 'v' key.
        let at = bytes.windows(2).position(|w| w == [0xa1, b'v']).expect("v key") + 2;
        bytes[at] = 0x02;
        let err = Envelope::decode(&bytes).expect_err("v=2");
        assert!(err.0.contains("`v` is 2"), "{err}");
    }

    #[test]
    fn dead_letters_round_trip_and_carry_envelope_fields() {
        let dead = DeadLetter { content: DeadContent::Envelope(sample()), reason: "boom".into(), dead_at: 5 };
        let bytes = dead.encode();
        assert_eq!(DeadLetter::decode(&bytes), Ok(dead));
        // A dead entry is still readable as the envelope it holds.
        assert_eq!(Envelope::decode(&bytes).map(|e| e.id), Ok("m-1".to_string()));

        let raw = DeadLetter {
            content: DeadContent::Raw(Bytes::from_static(b"\xffnot msgpack")),
            reason: "not a MessagePack map".into(),
            dead_at: 6,
        };
        assert_eq!(DeadLetter::decode(&raw.encode()), Ok(raw));
    }

    #[test]
    fn payload_json_shows_utf8_binaries_as_text() {
        #[derive(serde::Serialize)]
        struct P<'a> {
            #[serde(with = "serde_bytes")]
            body: &'a [u8],
        }
        let payload = encode_payload(&P { body: b"{\"x\":1}" }).expect("payload");
        assert_eq!(payload_to_json(&payload), serde_json::json!({"body": "{\"x\":1}"}));
    }

    #[test]
    fn a_sized_payload_encodes_alike_whatever_the_capacity() {
        let value = serde_json::json!({"event": "issues", "body": "x".repeat(5000)});
        let plain = encode_payload(&value).expect("payload");
        for capacity in [0, 16, 5000, 5100, 1 << 16] {
            assert_eq!(encode_payload_sized(&value, capacity).expect("payload"), plain, "capacity {capacity}");
        }
        assert!(matches!(encode_payload_sized(&[1, 2], 64), Err(PayloadError::NotAMap)));
    }
}
