//! `X-Hub-Signature-256`: GitHub's HMAC-SHA256 of the raw request body.

use hmac::{Hmac, Mac};
use hookbus_config::Secret;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header's scheme prefix.
const PREFIX: &str = "sha256=";

/// Why a signature was refused. The text is safe to answer and log: it never
/// contains the secret, the body or the expected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 is not of the form sha256=<64 hex digits>")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body")]
    Mismatch,
}

/// Checks `header` (the raw `X-Hub-Signature-256` value, if any) against the
/// HMAC of `body` under `secret`, comparing in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&[u8]>) -> Result<(), SignatureError> {
    let claimed = claimed_digest(header)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    matches(mac, &claimed)
}

/// The digest `header` claims, if it is of the form `sha256=<64 hex digits>`.
fn claimed_digest(header: Option<&[u8]>) -> Result<[u8; 32], SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header.strip_prefix(PREFIX.as_bytes()).ok_or(SignatureError::Malformed)?;
    let mut claimed = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut claimed).map_err(|_| SignatureError::Malformed)?;
    Ok(claimed)
}

fn matches(mac: HmacSha256, claimed: &[u8; 32]) -> Result<(), SignatureError> {
    // `verify_slice` compares with `subtle`'s constant-time equality.
    mac.verify_slice(claimed).map_err(|_| SignatureError::Mismatch)
}

/// The secrets a webhook may be signed with: the configured one and, while
/// it is being rotated, the previous one (GitHub signs with the old secret
/// until its webhook settings are saved with the new one).
#[derive(Debug, Clone)]
pub struct WebhookSecrets {
    /// The HMAC under the current secret with its key already absorbed:
    /// cloned per webhook instead of hashing the padded key's two blocks
    /// again.
    keyed: HmacSha256,
    previous: Option<Secret>,
}

impl Default for WebhookSecrets {
    fn default() -> Self {
        WebhookSecrets::new(Secret::default(), Secret::default())
    }
}

/// Which of the [`WebhookSecrets`] a signature was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedWith {
    Current,
    /// The previous secret: the rotation is not finished on GitHub's side.
    Previous,
}

impl WebhookSecrets {
    /// `previous` empty: no rotation under way.
    pub fn new(current: Secret, previous: Secret) -> Self {
        let previous = (!previous.is_empty() && previous != current).then_some(previous);
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed = HmacSha256::new_from_slice(current.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        WebhookSecrets { keyed, previous }
    }

    /// Checks `header` against `body` under the current secret, then (only
    /// when that fails, so the usual case costs one HMAC) the previous one.
    pub fn verify(&self, body: &[u8], header: Option<&[u8]>) -> Result<SignedWith, SignatureError> {
        let mut verification = self.begin(header)?;
        verification.update(body);
        verification.finish(body)
    }

    /// Starts checking `header` against a body that will be fed in pieces
    /// ([`Verification::update`]), for a caller that reads the body for
    /// something else at the same time. A missing or malformed header is
    /// refused here, before any of the body is read.
    pub fn begin(&self, header: Option<&[u8]>) -> Result<Verification<'_>, SignatureError> {
        let claimed = claimed_digest(header)?;
        Ok(Verification { secrets: self, claimed, mac: self.keyed.clone() })
    }
}

/// A signature check under way: the HMAC under the current secret of what
/// was fed so far.
pub struct Verification<'s> {
    secrets: &'s WebhookSecrets,
    claimed: [u8; 32],
    mac: HmacSha256,
}

impl Verification<'_> {
    /// The next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        self.mac.update(piece);
    }

    /// Whether the body — every piece fed, which together must be `body` —
    /// carries the claimed signature. Only when the current secret does not
    /// match is `body` hashed again, under the previous secret.
    pub fn finish(self, body: &[u8]) -> Result<SignedWith, SignatureError> {
        match (matches(self.mac, &self.claimed), &self.secrets.previous) {
            (Ok(()), _) => Ok(SignedWith::Current),
            (Err(_), Some(previous)) => {
                let mut mac =
                    HmacSha256::new_from_slice(previous.expose().as_bytes()).map_err(|_| SignatureError::Mismatch)?;
                mac.update(body);
                matches(mac, &self.claimed).map(|()| SignedWith::Previous)
            }
            (Err(mismatch), None) => Err(mismatch),
        }
    }
}

/// The header value GitHub would send for `body` (for `hookbus send`, tests
/// and the benchmark).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // GitHub's published example ("Validating webhook deliveries").
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIGNATURE: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn githubs_published_test_vector_verifies() {
        assert_eq!(verify(SECRET, BODY, Some(SIGNATURE.as_bytes())), Ok(()));
        assert_eq!(sign(SECRET, BODY), SIGNATURE);
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let upper = format!("sha256={}", SIGNATURE[7..].to_ascii_uppercase());
        assert_eq!(verify(SECRET, BODY, Some(upper.as_bytes())), Ok(()));
    }

    #[test]
    fn a_changed_body_secret_or_digest_is_a_mismatch() {
        assert_eq!(verify(SECRET, b"Hello, World?", Some(SIGNATURE.as_bytes())), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"another", BODY, Some(SIGNATURE.as_bytes())), Err(SignatureError::Mismatch));
        let flipped = SIGNATURE.replace("757107", "757108");
        assert_eq!(verify(SECRET, BODY, Some(flipped.as_bytes())), Err(SignatureError::Mismatch));
    }

    #[test]
    fn during_a_rotation_the_previous_secret_is_accepted_and_named() {
        let rotating = WebhookSecrets::new(Secret::new("new secret"), Secret::new(String::from_utf8_lossy(SECRET)));
        assert_eq!(rotating.verify(BODY, Some(SIGNATURE.as_bytes())), Ok(SignedWith::Previous));
        let by_new = sign(b"new secret", BODY);
        assert_eq!(rotating.verify(BODY, Some(by_new.as_bytes())), Ok(SignedWith::Current));
        let by_other = sign(b"other", BODY);
        assert_eq!(rotating.verify(BODY, Some(by_other.as_bytes())), Err(SignatureError::Mismatch));
        assert_eq!(rotating.verify(BODY, None), Err(SignatureError::Missing));

        let settled = WebhookSecrets::new(Secret::new("new secret"), Secret::default());
        assert_eq!(settled.verify(BODY, Some(SIGNATURE.as_bytes())), Err(SignatureError::Mismatch));
        assert_eq!(settled.verify(BODY, Some(by_new.as_bytes())), Ok(SignedWith::Current));
    }

    #[test]
    fn a_body_fed_in_pieces_is_judged_as_a_whole_body_is() {
        let rotating = WebhookSecrets::new(Secret::new("new secret"), Secret::new(String::from_utf8_lossy(SECRET)));
        let by_new = sign(b"new secret", BODY);
        let by_other = sign(b"other", BODY);
        let cases = [
            (SIGNATURE.as_bytes(), Ok(SignedWith::Previous)),
            (by_new.as_bytes(), Ok(SignedWith::Current)),
            (by_other.as_bytes(), Err(SignatureError::Mismatch)),
        ];
        for (header, expected) in cases {
            for split in 0..=BODY.len() {
                let in_pieces = rotating.begin(Some(header)).and_then(|mut verification| {
                    verification.update(&BODY[..split]);
                    verification.update(&BODY[split..]);
                    verification.finish(BODY)
                });
                assert_eq!(in_pieces, expected, "split at {split}");
            }
        }
        assert_eq!(rotating.begin(None).err(), Some(SignatureError::Missing));
        // Neither the secrets nor the keyed hash state appear in logs.
        let shown = format!("{rotating:?}");
        assert!(!shown.contains("new secret") && !shown.contains("Everybody"), "{shown}");
        let longest_number = shown.split(|c: char| !c.is_ascii_hexdigit()).map(str::len).max().unwrap_or(0);
        assert!(longest_number < 8, "hash state shown: {shown}");
        assert_eq!(rotating.begin(Some(b"sha256=zz")).err(), Some(SignatureError::Malformed));
    }

    #[test]
    fn missing_or_malformed_headers_are_refused() {
        assert_eq!(verify(SECRET, BODY, None), Err(SignatureError::Missing));
        assert_eq!(verify(SECRET, BODY, Some(b"sha1=757107ea")), Err(SignatureError::Malformed));
        assert_eq!(verify(SECRET, BODY, Some(b"sha256=zz")), Err(SignatureError::Malformed));
        assert_eq!(verify(SECRET, BODY, Some(&SIGNATURE.as_bytes()[..70])), Err(SignatureError::Malformed));
    }
}
