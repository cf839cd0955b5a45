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
