//! A GitHub App's key pair for tests that talk to a fake of GitHub's App
//! endpoints: the private key the hookbus side signs JWTs with, as GitHub
//! hands it out (PEM, PKCS#1), and the public key the fake checks them
//! with. Made for these tests only (`openssl genrsa -traditional 2048`);
//! it belongs to no App anywhere.

/// The App's id the tests configure.
pub const APP_ID: u64 = 424_242;

/// The App's private key, `-----BEGIN RSA PRIVATE KEY-----` as GitHub
/// generates it.
pub const PRIVATE_KEY: &str = include_str!("../keys/github-app.private-key.pem");

/// Its public key (SubjectPublicKeyInfo PEM), which GitHub keeps.
pub const PUBLIC_KEY: &str = include_str!("../keys/github-app.public-key.pem");

/// What GitHub checks of a call to an App's own endpoint (`/app/…`): an
/// `Authorization: Bearer <JWT>` signed (RS256) with [`PRIVATE_KEY`],
/// issued by App [`APP_ID`] (`iss`, a number), not expired, and valid for
/// at most 10 minutes. `Err` says what is wrong, as a fake's 401 would.
pub fn check_app_jwt(authorization: Option<&str>) -> Result<(), String> {
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: u64,
        iat: u64,
        exp: u64,
    }
    let token = authorization.and_then(|v| v.strip_prefix("Bearer ")).ok_or("no bearer token")?;
    let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    // `iss` is the App's id as a number, which the spec-claims check (text
    // only) would not read: it is checked below, with `iat`.
    validation.set_required_spec_claims(&["exp"]);
    let claims = decode::<Claims>(token, &key, &validation).map_err(|e| e.to_string())?.claims;
    if claims.iss != APP_ID {
        return Err(format!("issued by App {}", claims.iss));
    }
    if claims.exp.saturating_sub(claims.iat) > 600 {
        return Err("valid for more than 10 minutes".into());
    }
    Ok(())
}
