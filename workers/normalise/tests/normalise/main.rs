//! The normalise worker's integration tests, one binary:
//!
//! - [`fixtures`]: every real `@octokit/webhooks-examples` payload of the
//!   synced events normalises as docs/pipeline.md says, field by field;
//!   installation events, allow-list and client changes.
//! - [`robustness`]: random bytes and mutated real payloads never panic.
//! - [`pipeline`]: gateway → normalise → `hookbus:{reconcile}:pending` over a
//!   real redis-server.

mod fixtures;
mod pipeline;
mod robustness;
mod support;
