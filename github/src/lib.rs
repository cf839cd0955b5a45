//! hookbus-github: what every worker that talks to the GitHub API shares —
//! reconcile (same-second tie fetches), commit-to-git (contents-API mode)
//! and notify (write-back).
//!
//! - [`client`]: an octocrab client on `github.api_url` with the token and
//!   bounded timeouts;
//! - [`rate_limit`]: how long a 403/429 answer asks us to wait, so a worker
//!   defers the message instead of spending its attempts;
//! - [`error_message`]: what GitHub said went wrong, for a dead letter's
//!   reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest a rate limit may defer one message.
pub const MAX_DEFER: Duration = Duration::from_secs(3_600);

/// Why a GitHub client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("github.api_url (HOOKBUS_GITHUB__API_URL) {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("GitHub client: {0}")]
    Client(String),
}

/// An octocrab client for `api_url` (GitHub, GitHub Enterprise, or a local
/// fake in tests) authenticated with `token`. `timeout` bounds connecting,
/// reading and writing.
pub fn client(api_url: &str, token: &str, timeout: Duration) -> Result<octocrab::Octocrab, GithubError> {
    octocrab::Octocrab::builder()
        .base_uri(api_url)
        .map_err(|e| GithubError::BadUrl { url: api_url.to_string(), reason: e.to_string() })?
        .personal_token(token.to_string())
        .set_connect_timeout(Some(timeout))
        .set_read_timeout(Some(timeout))
        .set_write_timeout(Some(timeout))
        .build()
        .map_err(|e| GithubError::Client(e.to_string()))
}

/// How long GitHub asks us to wait, if this answer is a rate limit: a 403
/// or 429 with `Retry-After` (seconds), or with `X-RateLimit-Remaining: 0`
/// and `X-RateLimit-Reset` (epoch seconds). A 429 without either waits a
/// minute, as GitHub's documentation advises. Never more than [`MAX_DEFER`].
pub fn rate_limit(
    status: u16,
    retry_after: Option<String>,
    remaining: Option<String>,
    reset: Option<String>,
) -> Option<Duration> {
    if status != 403 && status != 429 {
        return None;
    }
    if let Some(secs) = retry_after.and_then(|s| s.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs.max(1)).min(MAX_DEFER));
    }
    if remaining.as_deref().map(str::trim) == Some("0") {
        if let Some(reset) = reset.and_then(|s| s.trim().parse::<u64>().ok()) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            // A little past the reset, so the retry does not arrive just
            // before it.
            let wait = Duration::from_secs(reset).saturating_sub(now) + Duration::from_millis(250);
            return Some(wait.min(MAX_DEFER));
        }
    }
    (status == 429).then_some(Duration::from_secs(60))
}

/// What an error answer's body says went wrong: its `message`, and for a
/// 422 each of its `errors` (`Validation Failed: Release.tag_name
/// already_exists`), so that a dead letter tells which field GitHub refused
/// and why. Empty when the body is not GitHub's error JSON.
pub fn error_message(body: &str) -> String {
    let Ok(answer) = serde_json::from_str::<serde_json::Value>(body) else { return String::new() };
    let text = |v: &serde_json::Value, name: &str| v.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let mut message = text(&answer, "message").unwrap_or_default();
    let details: Vec<String> = answer
        .get("errors")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
        .filter_map(|error| match error {
            serde_json::Value::String(said) => Some(said.clone()),
            _ => text(error, "message").or_else(|| {
                let at = [text(error, "resource"), text(error, "field")].into_iter().flatten().collect::<Vec<_>>();
                let code = text(error, "code")?;
                Some(if at.is_empty() { code } else { format!("{} {code}", at.join(".")) })
            }),
        })
        .collect();
    if !details.is_empty() {
        message = format!("{message}: {}", details.join("; "));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_answers_are_read_from_github_headers() {
        assert_eq!(rate_limit(429, Some("7".into()), None, None), Some(Duration::from_secs(7)));
        assert_eq!(rate_limit(403, Some("2".into()), None, None), Some(Duration::from_secs(2)));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let wait = rate_limit(403, None, Some("0".into()), Some((now + 30).to_string())).expect("limited");
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(31), "{wait:?}");
        assert_eq!(rate_limit(403, None, Some("12".into()), Some(now.to_string())), None, "a plain 403");
        assert_eq!(rate_limit(429, None, None, None), Some(Duration::from_secs(60)));
        assert_eq!(rate_limit(500, Some("1".into()), None, None), None);
        assert_eq!(rate_limit(429, Some("999999".into()), None, None), Some(MAX_DEFER));
    }

    #[test]
    fn an_error_answer_says_what_github_refused() {
        let taken = r#"{"message":"Validation Failed","errors":[{"resource":"Release","code":"already_exists","field":"tag_name"}],"documentation_url":"https://docs.github.com"}"#;
        assert_eq!(error_message(taken), "Validation Failed: Release.tag_name already_exists");
        let said = r#"{"message":"Validation Failed","errors":[{"resource":"Issue","code":"custom","message":"title is too long"},"labels are locked"]}"#;
        assert_eq!(error_message(said), "Validation Failed: title is too long; labels are locked");
        assert_eq!(error_message(r#"{"message":"Not Found"}"#), "Not Found");
        assert_eq!(error_message("<html>bad gateway</html>"), "");
    }
}
