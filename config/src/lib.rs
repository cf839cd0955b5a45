//! hookbus configuration.
//!
//! Layers, later wins (SPEC §7):
//!
//! 1. built-in defaults ([`Settings::default`]);
//! 2. `config/hookbus.toml`, or the file named by `HOOKBUS_CONFIG`;
//! 3. environment variables `HOOKBUS_*`, `__` nesting (`HOOKBUS_BUS__PREFIX`);
//! 4. the Heroku conventions `REDIS_URL` and `PORT`.
//!
//! [`Settings::load`] validates everything at start: a bad value is a
//! [`ConfigError`] naming the setting, and binaries exit with code 2
//! ([`exit_on_error`]). Every setting is documented in `docs/configuration.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Where the file layer is read from when `HOOKBUS_CONFIG` is not set.
pub const DEFAULT_FILE: &str = "config/hookbus.toml";

/// A configuration problem, naming the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid { setting: String, reason: String },
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

impl ConfigError {
    pub fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { setting: setting.into(), reason: reason.into() }
    }
}

/// Prints the error and exits with status 2, the documented code for bad
/// configuration.
pub fn exit_on_error<T>(result: Result<T, ConfigError>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => {
            eprintln!("hookbus: {err}");
            std::process::exit(2);
        }
    }
}

/// A value that must never be printed: `Debug` and `Display` show `***`.
///
/// Deserializes from text or from a number or boolean (an environment value
/// such as `12345` arrives typed), keeping the text exactly.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor).map(Secret)
    }
}

/// Accepts text, or a scalar that is read back as the text it was written as.
struct TextVisitor;

impl serde::de::Visitor<'_> for TextVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Everything hookbus reads at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub redis: RedisSettings,
    pub bus: BusSettings,
    pub github: GithubSettings,
    pub api: ApiSettings,
    pub gateway: GatewaySettings,
    pub normalise: NormaliseSettings,
    pub git: GitSettings,
    pub reconcile: ReconcileSettings,
    pub notify: NotifySettings,
    pub admin: AdminSettings,
}

/// The operator dashboard (`/admin` on the gateway).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// HTTP Basic password of `/admin` (user `admin`). Unset: `/admin` does
    /// not exist (404), except in `hookbus dev` for requests from loopback.
    pub password: Secret,
}

impl AdminSettings {
    /// Shortest password accepted: the page can retry and delete messages.
    pub const MIN_PASSWORD_CHARS: usize = 12;

    /// The password, when one is set.
    pub fn password(&self) -> Option<&Secret> {
        Some(&self.password).filter(|p| !p.is_empty())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let Some(password) = self.password() else { return Ok(()) };
        if password.expose().chars().count() < Self::MIN_PASSWORD_CHARS {
            return Err(ConfigError::invalid(
                "admin.password (HOOKBUS_ADMIN__PASSWORD)",
                format!("must be at least {} characters", Self::MIN_PASSWORD_CHARS),
            ));
        }
        if password.expose().trim() != password.expose() {
            return Err(ConfigError::invalid(
                "admin.password (HOOKBUS_ADMIN__PASSWORD)",
                "must not start or end with whitespace",
            ));
        }
        Ok(())
    }
}

/// The notify worker (`hookbus-notify`): subscribers, alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySettings {
    /// Who is told about every synced record: a TOML array of tables, or a
    /// JSON list in `HOOKBUS_NOTIFY__SUBSCRIBERS`.
    pub subscribers: Subscribers,
    /// Slack-compatible webhook (`{"text": ...}`) told when messages go dead
    /// (`HOOKBUS_NOTIFY__ALERT_WEBHOOK`). Empty: no alerts are posted. A
    /// secret, since such URLs carry their own credential.
    pub alert_webhook: Secret,
    /// At most one alert per queue per window; notices inside it are folded
    /// into a count that a later alert reports.
    pub alert_window_ms: u64,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            subscribers: Subscribers::default(),
            alert_webhook: Secret::default(),
            alert_window_ms: 60_000,
        }
    }
}

impl NotifySettings {
    /// The alert webhook, when one is configured.
    pub fn alert_webhook(&self) -> Option<&Secret> {
        Some(&self.alert_webhook).filter(|url| !url.expose().trim().is_empty())
    }

    pub fn alert_window(&self) -> Duration {
        Duration::from_millis(self.alert_window_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        const SETTING: &str = "HOOKBUS_NOTIFY__SUBSCRIBERS";
        const KINDS: [&str; 4] = ["issue", "pull_request", "comment", "release"];
        let is_http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.subscribers.iter().enumerate() {
            let field = |name: &str| format!("notify.subscribers[{i}].{name} ({SETTING})");
            if !is_http(&s.url) {
                return Err(ConfigError::invalid(field("url"), "must start with http:// or https://"));
            }
            if s.secret.expose().is_empty() {
                return Err(ConfigError::invalid(field("secret"), "must not be empty (it keys the signature)"));
            }
            if s.timeout_ms == 0 || s.timeout_ms > 300_000 {
                return Err(ConfigError::invalid(field("timeout_ms"), "must be 1 to 300000"));
            }
            if s.name.is_empty() || s.name.contains(|c: char| c.is_whitespace() || c == ':') {
                return Err(ConfigError::invalid(field("name"), "must be non-empty, without spaces or colons"));
            }
            if !names.insert(s.name.as_str()) {
                return Err(ConfigError::invalid(field("name"), format!("{:?} is used twice", s.name)));
            }
            if let Some(kind) = s.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
                return Err(ConfigError::invalid(
                    field("kinds"),
                    format!("{kind:?} is not one of issue, pull_request, comment, release"),
                ));
            }
            if let Some(bad) = s.repositories.iter().find(|r| r.split('/').filter(|p| !p.is_empty()).count() != 2) {
                return Err(ConfigError::invalid(field("repositories"), format!("{bad:?} is not \"owner/name\"")));
            }
        }
        if self.alert_webhook().is_some_and(|url| !is_http(url.expose().trim())) {
            return Err(ConfigError::invalid(
                "notify.alert_webhook (HOOKBUS_NOTIFY__ALERT_WEBHOOK)",
                "must start with http:// or https://",
            ));
        }
        if self.alert_window_ms == 0 {
            return Err(ConfigError::invalid(
                "notify.alert_window_ms (HOOKBUS_NOTIFY__ALERT_WINDOW_MS)",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// One subscriber: where its events go and which ones it wants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberSettings {
    /// Names the subscriber in keys, logs and dead letters; defaults to its
    /// position in the list (`0`, `1`, ...). Keep it when reordering, or
    /// deliveries still queued lose their subscriber.
    #[serde(default)]
    pub name: String,
    pub url: String,
    /// Key of the `X-Hookbus-Signature-256` HMAC.
    pub secret: Secret,
    /// Only events of these `owner/name` repositories; empty: all.
    #[serde(default)]
    pub repositories: RepositoryList,
    /// Only these resource kinds (`issue`, `pull_request`, `comment`,
    /// `release`); empty: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// A delivery slower than this fails and is retried.
    #[serde(default = "default_subscriber_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_subscriber_timeout_ms() -> u64 {
    10_000
}

impl SubscriberSettings {
    /// Whether this subscriber wants an event about `kind` in `repository`.
    pub fn wants(&self, repository: &str, kind: &str) -> bool {
        self.repositories.allows(repository) && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The subscriber list: a list (TOML array of tables) or the same list as
/// JSON text (an environment variable). Unnamed subscribers are named by
/// their position.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Subscribers(Vec<SubscriberSettings>);

impl Subscribers {
    pub fn new(list: Vec<SubscriberSettings>) -> Self {
        Subscribers(list.into_iter().enumerate().map(Self::named).collect())
    }
    fn named((i, mut s): (usize, SubscriberSettings)) -> SubscriberSettings {
        if s.name.is_empty() {
            s.name = i.to_string();
        }
        s
    }
    pub fn iter(&self) -> impl Iterator<Item = &SubscriberSettings> {
        self.0.iter()
    }
    pub fn get(&self, name: &str) -> Option<&SubscriberSettings> {
        self.0.iter().find(|s| s.name == name)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Subscribers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> serde::de::Visitor<'de> for ListVisitor {
            type Value = Vec<SubscriberSettings>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of subscribers, or that list as JSON text")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v.trim().is_empty() {
                    return Ok(Vec::new());
                }
                // serde_json's message names the field and the column at fault.
                serde_json::from_str(v).map_err(|e| E::custom(format!("not a JSON list of subscribers: {e}")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
            }
        }
        deserializer.deserialize_any(ListVisitor).map(Subscribers::new)
    }
}

/// The reconcile worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileSettings {
    /// How long operation records (the audit trail) are kept.
    pub retention_ms: u64,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings { retention_ms: 7 * 24 * 3_600_000 }
    }
}

/// Talking to GitHub: the webhook secret, the API token and where the API is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubSettings {
    /// Key of the `X-Hub-Signature-256` HMAC (`HOOKBUS_GITHUB__WEBHOOK_SECRET`).
    /// The gateway refuses to start without one outside dev mode.
    pub webhook_secret: Secret,
    /// During a rotation, the secret GitHub may still sign with
    /// (`HOOKBUS_GITHUB__PREVIOUS_WEBHOOK_SECRET`): accepted too, each use
    /// logged. Empty outside a rotation.
    pub previous_webhook_secret: Secret,
    /// Webhooks whose failed deliveries the gateway asks GitHub to send
    /// again (GitHub never does by itself): `repos/<owner>/<repo>/hooks/<id>`
    /// or `orgs/<org>/hooks/<id>` (these need `github.token`), or `app/hook`,
    /// the GitHub App's own webhook (it needs `github.app_id` and
    /// `github.app_private_key`), comma-separated in
    /// `HOOKBUS_GITHUB__REDELIVER_HOOKS`.
    pub redeliver_hooks: String,
    /// How often the failed deliveries are looked for, ms.
    pub redeliver_interval_ms: u64,
    /// How far back, ms: at most GitHub's 3 days, and within
    /// `gateway.delivery_retention_ms` (an older delivery might have been
    /// accepted by a gateway whose mark has expired since).
    pub redeliver_window_ms: u64,
    /// Token for the GitHub API: write-back, tie-break fetches, contents-API mode.
    pub token: Secret,
    /// A GitHub App: its numeric App ID (`HOOKBUS_GITHUB__APP_ID`; 0 for
    /// none). For `app/hook` in `github.redeliver_hooks`, and with
    /// `github.installation_id` for the API in place of a token.
    pub app_id: u64,
    /// That App's private key, the PEM file GitHub generates
    /// (`HOOKBUS_GITHUB__APP_PRIVATE_KEY`; `\n` may stand for its newlines).
    /// It signs the JWTs that GitHub asks for on the App's own endpoints.
    pub app_private_key: Secret,
    /// The App's installation (on an organisation or an account) that the
    /// workers act as, instead of `github.token`
    /// (`HOOKBUS_GITHUB__INSTALLATION_ID`; 0 for none): tokens are minted
    /// from the App's key, an hour each, and minted again before they end.
    pub installation_id: u64,
    /// API base URL; GitHub Enterprise, or a local fake in tests.
    pub api_url: String,
}

impl Default for GithubSettings {
    fn default() -> Self {
        GithubSettings {
            webhook_secret: Secret::default(),
            previous_webhook_secret: Secret::default(),
            redeliver_hooks: String::new(),
            redeliver_interval_ms: 60_000,
            redeliver_window_ms: 24 * 3_600_000,
            token: Secret::default(),
            app_id: 0,
            app_private_key: Secret::default(),
            installation_id: 0,
            api_url: "https://api.github.com".into(),
        }
    }
}

/// In `github.redeliver_hooks`, the GitHub App's own webhook.
pub const APP_HOOK: &str = "app/hook";

impl GithubSettings {
    /// GitHub keeps (and redelivers) deliveries for 3 days.
    pub const MAX_REDELIVER_WINDOW_MS: u64 = 3 * 24 * 3_600_000;

    /// The API paths of [`GithubSettings::redeliver_hooks`], checked.
    pub fn redeliver_hooks(&self) -> Result<Vec<String>, ConfigError> {
        let setting = "github.redeliver_hooks (HOOKBUS_GITHUB__REDELIVER_HOOKS)";
        let mut hooks = Vec::new();
        for hook in self.redeliver_hooks.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let hook = hook.trim_matches('/');
            let parts: Vec<&str> = hook.split('/').collect();
            let name = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            let id = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
            let fits = match parts.as_slice() {
                ["repos", owner, repo, "hooks", n] => name(owner) && name(repo) && id(n),
                ["orgs", org, "hooks", n] => name(org) && id(n),
                ["app", "hook"] => true,
                _ => false,
            };
            if !fits {
                return Err(ConfigError::invalid(
                    setting,
                    format!("`{hook}` is not repos/<owner>/<repo>/hooks/<id>, orgs/<org>/hooks/<id> or app/hook"),
                ));
            }
            hooks.push(hook.to_string());
        }
        Ok(hooks)
    }

    /// What asking GitHub about `hooks` (as [`GithubSettings::redeliver_hooks`]
    /// gives them) needs: `github.token` for a repository's or an
    /// organisation's webhook, the App's id and key for `app/hook`.
    pub fn check_redeliver_credentials(&self, hooks: &[String]) -> Result<(), ConfigError> {
        let needed = "deliveries are read and redelivered through the GitHub API";
        if hooks.iter().any(|hook| hook != APP_HOOK) && !self.has_api_credentials() {
            return Err(ConfigError::invalid(
                "github.token (HOOKBUS_GITHUB__TOKEN)",
                format!(
                    "or a GitHub App (github.app_id, github.app_private_key) is required by a repository's or an \
                     organisation's webhook in github.redeliver_hooks: {needed}"
                ),
            ));
        }
        if hooks.iter().any(|hook| hook == APP_HOOK) {
            self.check_app(&format!("app/hook in github.redeliver_hooks ({needed}, signed in as the App)"))?;
        }
        Ok(())
    }

    /// Whether the workers can call the GitHub API: a token, an App's
    /// installation, or the App (through its installation on each
    /// repository).
    pub fn has_api_credentials(&self) -> bool {
        !self.token.is_empty() || self.installation_id != 0 || (self.app_id != 0 && !self.app_private_key.is_empty())
    }

    /// The API credentials make sense: an installation comes with its App,
    /// and there is one kind, not two.
    fn check_credentials(&self) -> Result<(), ConfigError> {
        if self.installation_id == 0 {
            return Ok(());
        }
        if !self.token.is_empty() {
            return Err(ConfigError::invalid(
                "github.installation_id (HOOKBUS_GITHUB__INSTALLATION_ID)",
                "and github.token (HOOKBUS_GITHUB__TOKEN) are both set: the workers act as one of them; unset the other",
            ));
        }
        self.check_app("github.installation_id (the App's installation signs in with the App's key)")
    }

    /// The App's id and key are there (whether the key signs is checked
    /// where it is used: `hookbus_github::App`).
    fn check_app(&self, needed_by: &str) -> Result<(), ConfigError> {
        if self.app_id == 0 {
            return Err(ConfigError::invalid(
                "github.app_id (HOOKBUS_GITHUB__APP_ID)",
                format!("is required by {needed_by}"),
            ));
        }
        if self.app_private_key.is_empty() {
            return Err(ConfigError::invalid(
                "github.app_private_key (HOOKBUS_GITHUB__APP_PRIVATE_KEY)",
                format!("is required by {needed_by}"),
            ));
        }
        Ok(())
    }

    /// The webhook secret, or the error a gateway outside dev mode stops with.
    pub fn require_webhook_secret(&self) -> Result<&Secret, ConfigError> {
        if self.webhook_secret.expose().trim().is_empty() {
            return Err(ConfigError::invalid(
                "github.webhook_secret (HOOKBUS_GITHUB__WEBHOOK_SECRET)",
                "is required: set it to the secret configured on the GitHub webhook",
            ));
        }
        Ok(&self.webhook_secret)
    }
}

/// The client API (`/api/v1`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Bearer tokens accepted on `/api/v1`, comma-separated in
    /// `HOOKBUS_API__TOKENS`. None configured: every API call is refused.
    pub tokens: Tokens,
}

/// A list of secrets, written as one comma-separated string or as a list.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Tokens(Vec<Secret>);

impl Tokens {
    pub fn new(tokens: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Tokens(tokens.into_iter().map(|t| Secret::new(t)).collect())
    }
    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} tokens>", self.0.len())
    }
}

impl<'de> Deserialize<'de> for Tokens {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<Secret>),
            One(Secret),
        }
        let list = match Form::deserialize(deserializer)? {
            Form::List(list) => list,
            Form::One(joined) => joined.expose().split(',').map(Secret::new).collect(),
        };
        Ok(Tokens(list.into_iter().map(|t| Secret::new(t.expose().trim())).filter(|t| !t.is_empty()).collect()))
    }
}

/// The normalise worker (`hookbus-normalise`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NormaliseSettings {
    /// Allow-list of `owner/name` repositories to sync, comma-separated in
    /// `HOOKBUS_NORMALISE__REPOSITORIES`. Empty: every repository that
    /// installation events have not disabled. Operations for others are
    /// still emitted, marked so that reconcile records them `disabled`.
    pub repositories: RepositoryList,
}

/// `owner/name` entries, written as one comma-separated string or as a list;
/// kept lowercase (GitHub names are case-insensitive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RepositoryList(Vec<String>);

impl RepositoryList {
    pub fn new(names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        RepositoryList(names.into_iter().map(|n| n.into().trim().to_lowercase()).collect())
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Whether `repository` may sync: listed, or the list is empty.
    pub fn allows(&self, repository: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|r| r.eq_ignore_ascii_case(repository))
    }
}

impl<'de> Deserialize<'de> for RepositoryList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            One(String),
        }
        let list = match Form::deserialize(deserializer)? {
            Form::List(list) => list,
            Form::One(joined) => joined.split(',').map(str::to_owned).collect(),
        };
        Ok(RepositoryList::new(list.into_iter().filter(|r| !r.trim().is_empty())))
    }
}

/// Commit-to-git (`hookbus-commit`): where records are committed and pushed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitSettings {
    /// Where commits are pushed (`HOOKBUS_GIT__REMOTE`): a local path, a
    /// `file://` URL, or an `https://` URL (authenticated with
    /// `github.token`). Required by `hookbus-commit` only.
    pub remote: String,
    /// Branch committed to (`HOOKBUS_GIT__BRANCH`); created on the first
    /// push to an empty remote.
    pub branch: String,
    /// The worker's own clone (`HOOKBUS_GIT__WORKDIR`), created when missing.
    /// One per running worker: two processes must not share it.
    pub workdir: PathBuf,
    /// Committer of every commit (the author is whoever made the change).
    pub committer_name: String,
    pub committer_email: String,
    /// How long a commit waits for others to share its push: a burst of
    /// operations costs one push instead of one each.
    pub push_window_ms: u64,
    /// A batch this large is pushed without waiting out the window.
    pub push_batch_max: usize,
    /// How records reach the repository (`HOOKBUS_GIT__MODE`): `git` (a
    /// clone, commit and push) or `contents_api` (one GitHub contents-API
    /// request per record, for when the worker cannot have a clone).
    pub mode: GitMode,
    /// The repository written in `contents_api` mode, `owner/name`
    /// (`HOOKBUS_GIT__CONTENTS_REPOSITORY`); required in that mode.
    pub contents_repository: String,
}

/// How `hookbus-commit` writes records (`git.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitMode {
    /// A clone of `git.remote`: commit, then push.
    #[default]
    Git,
    /// GitHub's contents API at `github.api_url`, with `github.token`.
    ContentsApi,
}

impl Default for GitSettings {
    fn default() -> Self {
        GitSettings {
            remote: String::new(),
            branch: "main".into(),
            workdir: PathBuf::from(".hookbus/commit-workdir"),
            committer_name: "hookbus".into(),
            committer_email: "hookbus@localhost".into(),
            push_window_ms: 50,
            push_batch_max: 64,
            mode: GitMode::Git,
            contents_repository: String::new(),
        }
    }
}

impl GitSettings {
    /// The remote, or the error `hookbus-commit` stops with when none is set.
    pub fn require_remote(&self) -> Result<&str, ConfigError> {
        if self.remote.trim().is_empty() {
            return Err(ConfigError::invalid(
                "git.remote (HOOKBUS_GIT__REMOTE)",
                "is required: set it to the repository to push to (a path, file:// or https:// URL)",
            ));
        }
        Ok(&self.remote)
    }

    pub fn push_window(&self) -> Duration {
        Duration::from_millis(self.push_window_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let remote = self.remote.trim();
        if remote.contains("://") && !(remote.starts_with("file://") || remote.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "git.remote (HOOKBUS_GIT__REMOTE)",
                "must be a local path, a file:// URL or an https:// URL",
            ));
        }
        if remote.starts_with("git@") {
            return Err(ConfigError::invalid(
                "git.remote (HOOKBUS_GIT__REMOTE)",
                "ssh remotes are not supported: use an https:// URL with HOOKBUS_GITHUB__TOKEN",
            ));
        }
        let branch = &self.branch;
        let bad_branch = branch.is_empty()
            || branch.starts_with(['-', '/', '.'])
            || branch.ends_with(['/', '.'])
            || branch.ends_with(".lock")
            || branch.contains("..")
            || branch.contains("//")
            || branch.contains("@{")
            || branch.chars().any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c));
        if bad_branch {
            return Err(ConfigError::invalid("git.branch (HOOKBUS_GIT__BRANCH)", "is not a valid git branch name"));
        }
        if self.workdir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("git.workdir (HOOKBUS_GIT__WORKDIR)", "must not be empty"));
        }
        if self.committer_name.trim().is_empty() {
            return Err(ConfigError::invalid("git.committer_name", "must not be empty"));
        }
        if !self.committer_email.contains('@') {
            return Err(ConfigError::invalid("git.committer_email", "must be an email address"));
        }
        if self.push_window_ms > 10_000 {
            return Err(ConfigError::invalid("git.push_window_ms", "must be at most 10000"));
        }
        if self.push_batch_max == 0 {
            return Err(ConfigError::invalid("git.push_batch_max", "must be at least 1"));
        }
        let repository = self.contents_repository.trim();
        if self.mode == GitMode::ContentsApi && repository.is_empty() {
            return Err(ConfigError::invalid(
                "git.contents_repository (HOOKBUS_GIT__CONTENTS_REPOSITORY)",
                "is required when git.mode is contents_api: set it to the repository to write to, \"owner/name\"",
            ));
        }
        let segment = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !repository.is_empty() && !repository.split_once('/').is_some_and(|(o, n)| segment(o) && segment(n)) {
            return Err(ConfigError::invalid(
                "git.contents_repository (HOOKBUS_GIT__CONTENTS_REPOSITORY)",
                format!("{repository:?} is not \"owner/name\""),
            ));
        }
        Ok(())
    }
}

/// More serving threads than this is a typo, not a machine.
pub const MAX_GATEWAY_THREADS: usize = 256;
/// At most this many serving threads unless `gateway.threads` says more: a
/// shared host (a Heroku dyno) reports all of its CPUs, and each thread
/// holds its own Redis connections, which small Redis plans count.
pub const DEFAULT_GATEWAY_THREADS_CAP: usize = 4;

/// The HTTP gateway (`hookbus-gateway`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Listen port; Heroku's `PORT` sets it.
    pub port: u16,
    /// Largest webhook body accepted; GitHub caps payloads at 25 MiB.
    pub max_body_bytes: usize,
    /// On SIGTERM, how long in-flight requests may take before the process
    /// exits anyway. Under Heroku's 30 s.
    pub grace_period_ms: u64,
    /// How long an accepted `X-GitHub-Delivery` id is remembered, so that a
    /// redelivery within this time is answered as a duplicate.
    pub delivery_retention_ms: u64,
    /// Longest a request waits on Redis before answering 503: a dead Redis
    /// must fail fast, GitHub times out after 10 s.
    pub redis_timeout_ms: u64,
    /// Serving threads of `hookbus-gateway`, each with its own runtime and
    /// two Redis connections; 0 means one per CPU, at most
    /// [`DEFAULT_GATEWAY_THREADS_CAP`].
    pub threads: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            port: 8080,
            max_body_bytes: 25 * 1024 * 1024,
            grace_period_ms: 20_000,
            delivery_retention_ms: 7 * 24 * 3_600_000,
            redis_timeout_ms: 2_000,
            threads: 0,
        }
    }
}

impl GatewaySettings {
    pub fn grace_period(&self) -> Duration {
        Duration::from_millis(self.grace_period_ms)
    }
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
    /// How many serving threads: as set, or one per CPU up to
    /// [`DEFAULT_GATEWAY_THREADS_CAP`].
    pub fn serving_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from).min(DEFAULT_GATEWAY_THREADS_CAP),
            n => n,
        }
    }
}

/// Where Redis is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL; `REDIS_URL` sets it. A secret, since
    /// Heroku puts the password in it.
    pub url: Secret,
    /// Connections per process.
    pub pool_size: usize,
    /// Accept a self-signed certificate on `rediss://` (Heroku Redis uses one).
    pub tls_insecure: bool,
    /// `url` names Redis Cluster seed nodes (one URL, or several separated
    /// by commas) rather than one server. Same binaries, same keys: every
    /// key of a queue or resource carries a hash tag, so its atomic steps
    /// stay in one slot (docs/redis-layout.md, "Redis Cluster").
    pub cluster: bool,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings { url: Secret::new("redis://127.0.0.1:6379"), pool_size: 16, tls_insecure: true, cluster: false }
    }
}

impl RedisSettings {
    /// The URLs `url` names: itself, or in cluster mode each comma-separated
    /// seed node (a single server's URL is never split, so a password may
    /// hold a comma).
    pub fn nodes(&self) -> Vec<&str> {
        let url = self.url.expose();
        if self.cluster {
            url.split(',').map(str::trim).filter(|node| !node.is_empty()).collect()
        } else {
            vec![url]
        }
    }
}

/// The bus: key prefix and the delivery tunables of SPEC §4.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// Prefix of every Redis key (`<prefix>:{<queue>}:pending`).
    pub prefix: String,
    /// A consumer whose heartbeat is older than this is dead; its in-flight
    /// messages go back to `pending`.
    pub heartbeat_timeout_ms: u64,
    /// On SIGTERM, how long in-flight handlers may run before their messages
    /// are put back. Under Heroku's 30 s.
    pub grace_period_ms: u64,
    /// How long an idle consumer waits at most between polls of an empty queue.
    pub poll_interval_ms: u64,
    /// Deliveries before a failing message goes dead (every queue, unless
    /// `queues.<name>` overrides; likewise the four below).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    pub backoff_max_ms: u64,
    /// Handlers running at once in one process.
    pub concurrency: usize,
    /// Messages fetched (and acknowledged) per Redis round trip.
    pub batch_size: usize,
    /// Per-queue overrides of [`QueueSettings`].
    pub queues: BTreeMap<String, QueueOverrides>,
    /// How often the dead-letter sweep re-drives dead messages.
    pub dead_sweep_interval_ms: u64,
    /// How many times the sweep re-drives one message before it stays dead.
    pub dead_max_redrives: u32,
    /// Queue told about every message that goes dead or that the sweep gives
    /// up on (a `bus.dead` message; notify turns it into an alert). Empty:
    /// nobody is told.
    pub alert_queue: String,
}

/// Delivery tunables of one queue, as in effect.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// Deliveries before a failing message goes dead.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    pub backoff_max_ms: u64,
    /// Handlers running at once in one process.
    pub concurrency: usize,
    /// Messages fetched (and acknowledged) per Redis round trip.
    pub batch_size: usize,
}

/// Per-queue overrides; unset fields take the bus-wide value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueOverrides {
    pub max_attempts: Option<u32>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub concurrency: Option<usize>,
    pub batch_size: Option<usize>,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            prefix: "hookbus".into(),
            heartbeat_timeout_ms: 30_000,
            grace_period_ms: 20_000,
            poll_interval_ms: 50,
            max_attempts: 8,
            backoff_base_ms: 1_000,
            backoff_max_ms: 600_000,
            concurrency: 16,
            batch_size: 128,
            queues: BTreeMap::new(),
            dead_sweep_interval_ms: 3_600_000,
            dead_max_redrives: 5,
            alert_queue: "notify".into(),
        }
    }
}

impl BusSettings {
    /// The effective settings of one queue.
    pub fn queue(&self, name: &str) -> QueueSettings {
        let o = self.queues.get(name).cloned().unwrap_or_default();
        QueueSettings {
            max_attempts: o.max_attempts.unwrap_or(self.max_attempts),
            backoff_base_ms: o.backoff_base_ms.unwrap_or(self.backoff_base_ms),
            backoff_max_ms: o.backoff_max_ms.unwrap_or(self.backoff_max_ms),
            concurrency: o.concurrency.unwrap_or(self.concurrency),
            batch_size: o.batch_size.unwrap_or(self.batch_size),
        }
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    pub fn grace_period(&self) -> Duration {
        Duration::from_millis(self.grace_period_ms)
    }
}

impl Settings {
    /// Loads from the process environment and the configuration file.
    pub fn load() -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(&vars, None)
    }

    /// Loads from the given environment (tests pass their own), reading the
    /// file named by `HOOKBUS_CONFIG` in it, or `file`, or [`DEFAULT_FILE`].
    pub fn load_from(vars: &[(String, String)], file: Option<&Path>) -> Result<Self, ConfigError> {
        let get = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let explicit = get("HOOKBUS_CONFIG").map(PathBuf::from).or_else(|| file.map(Path::to_path_buf));
        let path = explicit.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_FILE));
        if let Some(p) = &explicit {
            if !p.exists() {
                return Err(ConfigError::File { path: p.clone(), reason: "does not exist".into() });
            }
        }

        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if path.exists() {
            figment = figment.merge(Toml::file(&path));
        }
        let env: BTreeMap<String, String> =
            vars.iter().filter(|(k, _)| k.starts_with("HOOKBUS_") && k != "HOOKBUS_CONFIG").cloned().collect();
        figment = figment.merge(env_provider(env));
        if let Some(url) = get("REDIS_URL") {
            figment = figment.merge(Serialized::default("redis.url", url));
        }
        if let Some(port) = get("PORT") {
            let port: u16 = port
                .trim()
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ConfigError::invalid("gateway.port (PORT)", "must be a port number, 1 to 65535"))?;
            figment = figment.merge(Serialized::default("gateway.port", port));
        }
        let settings: Settings = figment.extract().map_err(|err| from_figment(err, &path))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.admin.validate()?;
        if self.reconcile.retention_ms < 60_000 {
            return Err(ConfigError::invalid(
                "reconcile.retention_ms (HOOKBUS_RECONCILE__RETENTION_MS)",
                "must be at least 60000 (one minute)",
            ));
        }
        let nodes = self.redis.nodes();
        if nodes.is_empty() {
            return Err(ConfigError::invalid("redis.url (REDIS_URL)", "names no Redis Cluster seed node"));
        }
        for url in &nodes {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::invalid("redis.url (REDIS_URL)", "must start with redis:// or rediss://"));
            }
        }
        let several = self.redis.url.expose().split(',').skip(1).any(|part| part.trim_start().starts_with("redis"));
        if !self.redis.cluster && several {
            return Err(ConfigError::invalid(
                "redis.url (REDIS_URL)",
                "names several nodes; set redis.cluster = true (HOOKBUS_REDIS__CLUSTER) for a Redis Cluster",
            ));
        }
        if self.redis.cluster {
            if nodes.iter().any(|url| url.starts_with("rediss://"))
                != nodes.iter().all(|url| url.starts_with("rediss://"))
            {
                return Err(ConfigError::invalid(
                    "redis.url (REDIS_URL)",
                    "the Redis Cluster seed nodes must all use redis:// or all use rediss://",
                ));
            }
            if nodes.iter().any(|url| names_database(url)) {
                return Err(ConfigError::invalid(
                    "redis.url (REDIS_URL)",
                    "a Redis Cluster has only database 0; drop the /<db> path (redis.cluster is true)",
                ));
            }
        }
        self.github.check_credentials()?;
        let hooks = self.github.redeliver_hooks()?;
        if !hooks.is_empty() {
            self.github.check_redeliver_credentials(&hooks)?;
            if self.github.redeliver_interval_ms < 10_000 {
                return Err(ConfigError::invalid(
                    "github.redeliver_interval_ms (HOOKBUS_GITHUB__REDELIVER_INTERVAL_MS)",
                    "must be at least 10000",
                ));
            }
            let window = self.github.redeliver_window_ms;
            if !(60_000..=GithubSettings::MAX_REDELIVER_WINDOW_MS).contains(&window)
                || window > self.gateway.delivery_retention_ms
            {
                return Err(ConfigError::invalid(
                    "github.redeliver_window_ms (HOOKBUS_GITHUB__REDELIVER_WINDOW_MS)",
                    "must be at least 60000, at most 3 days (GitHub's) and at most gateway.delivery_retention_ms",
                ));
            }
        }
        if self.redis.pool_size == 0 {
            return Err(ConfigError::invalid("redis.pool_size", "must be at least 1"));
        }
        let bus = &self.bus;
        if bus.prefix.is_empty() || bus.prefix.contains(['{', '}', ' ']) {
            return Err(ConfigError::invalid(
                "bus.prefix (HOOKBUS_BUS__PREFIX)",
                "must be non-empty, without spaces or braces",
            ));
        }
        if bus.heartbeat_timeout_ms < 1_000 {
            return Err(ConfigError::invalid("bus.heartbeat_timeout_ms", "must be at least 1000"));
        }
        if bus.poll_interval_ms == 0 {
            return Err(ConfigError::invalid("bus.poll_interval_ms", "must be at least 1"));
        }
        let mut queues: Vec<(String, QueueSettings)> = vec![("bus".into(), bus.queue(""))];
        queues.extend(bus.queues.keys().map(|name| (format!("bus.queues.{name}"), bus.queue(name))));
        for (path, q) in queues {
            if q.max_attempts == 0 {
                return Err(ConfigError::invalid(format!("{path}.max_attempts"), "must be at least 1"));
            }
            if q.concurrency == 0 {
                return Err(ConfigError::invalid(format!("{path}.concurrency"), "must be at least 1"));
            }
            if q.batch_size == 0 || q.batch_size > 1_000 {
                return Err(ConfigError::invalid(format!("{path}.batch_size"), "must be 1 to 1000"));
            }
            if q.backoff_base_ms == 0 || q.backoff_max_ms < q.backoff_base_ms {
                return Err(ConfigError::invalid(
                    format!("{path}.backoff_base_ms"),
                    "must be at least 1 and not above backoff_max_ms",
                ));
            }
        }
        let api_url = &self.github.api_url;
        if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "github.api_url (HOOKBUS_GITHUB__API_URL)",
                "must start with http:// or https://",
            ));
        }
        let gateway = &self.gateway;
        if gateway.port == 0 {
            return Err(ConfigError::invalid("gateway.port (PORT)", "must be a port number, 1 to 65535"));
        }
        if gateway.max_body_bytes == 0 {
            return Err(ConfigError::invalid("gateway.max_body_bytes", "must be at least 1"));
        }
        if gateway.delivery_retention_ms < 60_000 {
            return Err(ConfigError::invalid(
                "gateway.delivery_retention_ms",
                "must be at least 60000 (GitHub redelivers for days)",
            ));
        }
        if gateway.redis_timeout_ms == 0 {
            return Err(ConfigError::invalid("gateway.redis_timeout_ms", "must be at least 1"));
        }
        if gateway.threads > MAX_GATEWAY_THREADS {
            return Err(ConfigError::invalid(
                "gateway.threads (HOOKBUS_GATEWAY__THREADS)",
                format!("must be 0 (one per CPU) to {MAX_GATEWAY_THREADS}"),
            ));
        }
        self.git.validate()?;
        self.notify.validate()?;
        let valid_part = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        for repository in self.normalise.repositories.iter() {
            if !repository.split_once('/').is_some_and(|(owner, name)| valid_part(owner) && valid_part(name)) {
                return Err(ConfigError::invalid(
                    "normalise.repositories (HOOKBUS_NORMALISE__REPOSITORIES)",
                    format!("{repository:?} is not \"owner/name\""),
                ));
            }
        }
        Ok(())
    }
}

/// Whether a `redis://` URL selects a database other than 0 (`/<db>`).
fn names_database(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let authority_end = rest.rfind('@').map_or(0, |at| at + 1);
    match rest[authority_end..].split_once('/') {
        Some((_, db)) => !(db.is_empty() || db == "0"),
        None => false,
    }
}

/// `HOOKBUS_BUS__PREFIX` -> `bus.prefix`.
fn env_provider(vars: BTreeMap<String, String>) -> impl figment::Provider {
    // figment's Env reads the real process environment; tests give their own
    // map, so the same mapping is built from a snapshot.
    let mut dict = figment::value::Dict::new();
    for (name, value) in vars {
        let path = name.trim_start_matches("HOOKBUS_").to_ascii_lowercase().replace("__", ".");
        dict.insert(path, parse_env_value(&value));
    }
    Serialized::globals(nest(dict))
}

/// Turns `{"bus.prefix": v}` into `{"bus": {"prefix": v}}`.
fn nest(flat: figment::value::Dict) -> figment::value::Dict {
    use figment::value::{Dict, Value};
    let mut root = Dict::new();
    for (path, value) in flat {
        let parts: Vec<&str> = path.split('.').collect();
        let mut node = &mut root;
        for part in &parts[..parts.len() - 1] {
            let entry = node.entry((*part).to_string()).or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            node = match entry {
                Value::Dict(_, d) => d,
                _ => unreachable!("made a dict above"),
            };
        }
        node.insert(parts[parts.len() - 1].to_string(), value);
    }
    root
}

fn parse_env_value(value: &str) -> figment::value::Value {
    use figment::value::Value;
    // Integers and booleans are typed; everything else stays text exactly as
    // written, so a secret or a comma-separated list is never reinterpreted
    // (figment's own parser would read `[a]` as an array, `1e5` as a float).
    if let Ok(n) = value.parse::<i64>() {
        if n.to_string() == value {
            return Value::from(n);
        }
    }
    if let Ok(n) = value.parse::<u64>() {
        if n.to_string() == value {
            return Value::from(n);
        }
    }
    match value {
        "true" => Value::from(true),
        "false" => Value::from(false),
        _ => Value::from(value.to_string()),
    }
}

fn from_figment(err: figment::Error, path: &Path) -> ConfigError {
    if err.path.is_empty() {
        // No setting to blame: the file itself did not parse.
        return ConfigError::File { path: path.to_path_buf(), reason: err.to_string() };
    }
    let setting = err.path.join(".");
    let env_name = format!("HOOKBUS_{}", err.path.join("__").to_ascii_uppercase());
    ConfigError::invalid(format!("{setting} ({env_name})"), err.kind.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_from(&vars(pairs), Some(Path::new("/nonexistent/hookbus.toml"))).or_else(|e| match e {
            ConfigError::File { .. } => Settings::load_from(&vars(pairs), None),
            other => Err(other),
        })
    }

    /// Loading `pairs` fails, naming `names`.
    fn refused(pairs: &[(&str, &str)], names: &str) {
        let err = load(pairs).expect_err("refused").to_string();
        assert!(err.contains(names), "{err}");
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = load(&[]).expect("defaults load");
        assert_eq!(s.bus.prefix, "hookbus");
        assert_eq!(s.bus.max_attempts, 8);
        assert_eq!(s.bus.grace_period_ms, 20_000);
        assert_eq!(s.bus.heartbeat_timeout_ms, 30_000);
        assert_eq!(s.bus.dead_max_redrives, 5);
        assert_eq!(s.bus.dead_sweep_interval_ms, 3_600_000);
    }

    #[test]
    fn environment_overrides_with_double_underscore_nesting() {
        let s = load(&[
            ("HOOKBUS_BUS__PREFIX", "acme"),
            ("HOOKBUS_BUS__MAX_ATTEMPTS", "3"),
            ("HOOKBUS_BUS__QUEUES__COMMIT__CONCURRENCY", "2"),
            ("REDIS_URL", "redis://example:6380/0"),
        ])
        .expect("loads");
        assert_eq!(s.bus.prefix, "acme");
        assert_eq!(s.bus.queue("normalise").max_attempts, 3);
        assert_eq!(s.bus.queue("commit").concurrency, 2);
        assert_eq!(s.bus.queue("commit").max_attempts, 3);
        assert_eq!(s.redis.url.expose(), "redis://example:6380/0");
    }

    #[test]
    fn file_layer_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("hookbus-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("hookbus.toml");
        std::fs::write(&file, "[bus]\nprefix = \"fromfile\"\nconcurrency = 4\n").expect("write");
        let path = file.to_string_lossy().to_string();
        let s = load(&[("HOOKBUS_CONFIG", &path), ("HOOKBUS_BUS__CONCURRENCY", "9")]).expect("loads");
        assert_eq!(s.bus.prefix, "fromfile");
        assert_eq!(s.bus.concurrency, 9);
    }

    #[test]
    fn a_bad_value_names_the_setting() {
        let err = load(&[("HOOKBUS_BUS__MAX_ATTEMPTS", "lots")]).expect_err("not a number");
        assert!(err.to_string().contains("bus.max_attempts"), "{err}");
        let err = load(&[("HOOKBUS_BUS__PREFIX", "has space")]).expect_err("bad prefix");
        assert!(err.to_string().contains("HOOKBUS_BUS__PREFIX"), "{err}");
        let err = load(&[("REDIS_URL", "http://x")]).expect_err("bad url");
        assert!(err.to_string().contains("REDIS_URL"), "{err}");
        let err = load(&[("HOOKBUS_BUS__QUEUES__COMMIT__BATCH_SIZE", "0")]).expect_err("zero batch");
        assert!(err.to_string().contains("bus.queues.commit.batch_size"), "{err}");
        let err = load(&[("HOOKBUS_BUS__NO_SUCH", "1")]).expect_err("unknown");
        assert!(err.to_string().contains("no_such"), "{err}");
    }

    #[test]
    fn gateway_defaults_match_the_spec() {
        let s = load(&[]).expect("defaults load");
        assert_eq!(s.gateway.max_body_bytes, 25 * 1024 * 1024);
        assert_eq!(s.gateway.delivery_retention_ms, 7 * 24 * 3_600_000);
        assert_eq!(s.github.api_url, "https://api.github.com");
        assert!(s.api.tokens.is_empty());
    }

    #[test]
    fn port_comes_from_heroku_port_and_is_checked() {
        assert_eq!(load(&[("PORT", "5123")]).expect("loads").gateway.port, 5123);
        let err = load(&[("PORT", "http")]).expect_err("not a port");
        assert!(err.to_string().contains("PORT"), "{err}");
        let err = load(&[("PORT", "70000")]).expect_err("too big");
        assert!(err.to_string().contains("PORT"), "{err}");
    }

    #[test]
    fn api_tokens_are_a_comma_separated_list() {
        let s = load(&[("HOOKBUS_API__TOKENS", " alpha,beta ,,12345")]).expect("loads");
        let tokens: Vec<&str> = s.api.tokens.iter().map(Secret::expose).collect();
        assert_eq!(tokens, ["alpha", "beta", "12345"]);
        let s = load(&[("HOOKBUS_API__TOKENS", "424242")]).expect("a numeric token loads");
        assert_eq!(s.api.tokens.iter().next().map(Secret::expose), Some("424242"));
        assert!(!format!("{s:?}").contains("424242"));
        assert!(s.admin.password().is_none(), "no admin password unless set");
    }

    #[test]
    fn admin_password_enables_the_dashboard_and_must_be_long_enough() {
        let s = load(&[("HOOKBUS_ADMIN__PASSWORD", "correct horse battery")]).expect("loads");
        assert_eq!(s.admin.password().map(Secret::expose), Some("correct horse battery"));
        assert!(!format!("{s:?}").contains("horse"), "never printed");
        let err = load(&[("HOOKBUS_ADMIN__PASSWORD", "short")]).expect_err("too short").to_string();
        assert!(err.contains("admin.password (HOOKBUS_ADMIN__PASSWORD)") && !err.contains("short\""), "{err}");
    }

    #[test]
    fn secrets_keep_their_exact_text() {
        for raw in ["12345", "1e5", "[abc]", "true", "007"] {
            let s = load(&[("HOOKBUS_GITHUB__WEBHOOK_SECRET", raw)]).expect("loads");
            assert_eq!(s.github.webhook_secret.expose(), raw);
        }
    }

    #[test]
    fn redelivered_hooks_are_checked_and_need_a_token() {
        let s = load(&[
            ("HOOKBUS_GITHUB__REDELIVER_HOOKS", " repos/octo/hello-world/hooks/12, /orgs/octo/hooks/7/ "),
            ("HOOKBUS_GITHUB__TOKEN", "t"),
        ])
        .expect("loads");
        assert_eq!(
            s.github.redeliver_hooks().ok(),
            Some(vec!["repos/octo/hello-world/hooks/12".into(), "orgs/octo/hooks/7".into()])
        );
        refused(&[("HOOKBUS_GITHUB__REDELIVER_HOOKS", "repos/octo/x/hooks/1")], "github.token (HOOKBUS_GITHUB__TOKEN)");
        refused(
            &[("HOOKBUS_GITHUB__REDELIVER_HOOKS", "repos/octo/hooks/1"), ("HOOKBUS_GITHUB__TOKEN", "t")],
            "HOOKBUS_GITHUB__REDELIVER_HOOKS",
        );
        refused(
            &[
                ("HOOKBUS_GITHUB__REDELIVER_HOOKS", "orgs/octo/hooks/1"),
                ("HOOKBUS_GITHUB__TOKEN", "t"),
                ("HOOKBUS_GITHUB__REDELIVER_WINDOW_MS", "604800000"),
            ],
            "HOOKBUS_GITHUB__REDELIVER_WINDOW_MS",
        );
    }

    #[test]
    fn the_app_hook_needs_the_app_not_a_token() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\\nMIIE...\\n-----END RSA PRIVATE KEY-----";
        let s = load(&[
            ("HOOKBUS_GITHUB__REDELIVER_HOOKS", "app/hook"),
            ("HOOKBUS_GITHUB__APP_ID", "123456"),
            ("HOOKBUS_GITHUB__APP_PRIVATE_KEY", key),
        ])
        .expect("no token needed");
        assert_eq!(s.github.redeliver_hooks().ok(), Some(vec![APP_HOOK.to_string()]));
        assert_eq!(s.github.app_id, 123456);
        assert!(!format!("{s:?}").contains("MIIE"), "the key is never printed");
        refused(
            &[("HOOKBUS_GITHUB__REDELIVER_HOOKS", "app/hook"), ("HOOKBUS_GITHUB__APP_PRIVATE_KEY", key)],
            "github.app_id (HOOKBUS_GITHUB__APP_ID)",
        );
        refused(
            &[("HOOKBUS_GITHUB__REDELIVER_HOOKS", "/app/hook/"), ("HOOKBUS_GITHUB__APP_ID", "1")],
            "github.app_private_key (HOOKBUS_GITHUB__APP_PRIVATE_KEY)",
        );
        // A repository's hook too, through the App's installation there.
        load(&[
            ("HOOKBUS_GITHUB__REDELIVER_HOOKS", "app/hook,repos/octo/x/hooks/1"),
            ("HOOKBUS_GITHUB__APP_ID", "1"),
            ("HOOKBUS_GITHUB__APP_PRIVATE_KEY", key),
        ])
        .expect("the App reads the repository's hook through its installation");
        refused(&[("HOOKBUS_GITHUB__APP_ID", "my-app")], "app_id");
    }

    #[test]
    fn an_installation_of_the_app_stands_in_for_the_token() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\\nMIIE...\\n-----END RSA PRIVATE KEY-----";
        let app = [("HOOKBUS_GITHUB__APP_ID", "123456"), ("HOOKBUS_GITHUB__APP_PRIVATE_KEY", key)];
        let with = |more: &[(&'static str, &'static str)]| [&app[..], more].concat();
        let s = load(&with(&[("HOOKBUS_GITHUB__INSTALLATION_ID", "987")])).expect("loads");
        assert_eq!(s.github.installation_id, 987);
        assert!(s.github.has_api_credentials());
        // Repository webhooks can be swept with the installation.
        load(&with(&[
            ("HOOKBUS_GITHUB__INSTALLATION_ID", "987"),
            ("HOOKBUS_GITHUB__REDELIVER_HOOKS", "repos/octo/x/hooks/1,app/hook"),
        ]))
        .expect("the installation reads the repository's hook, the App its own");
        refused(&[("HOOKBUS_GITHUB__INSTALLATION_ID", "987")], "github.app_id (HOOKBUS_GITHUB__APP_ID)");
        refused(
            &[("HOOKBUS_GITHUB__INSTALLATION_ID", "987"), ("HOOKBUS_GITHUB__APP_ID", "1")],
            "github.app_private_key (HOOKBUS_GITHUB__APP_PRIVATE_KEY)",
        );
        refused(
            &with(&[("HOOKBUS_GITHUB__INSTALLATION_ID", "987"), ("HOOKBUS_GITHUB__TOKEN", "t")]),
            "HOOKBUS_GITHUB__INSTALLATION_ID",
        );
    }

    #[test]
    fn a_missing_webhook_secret_names_the_variable() {
        let s = load(&[]).expect("loads");
        let err = s.github.require_webhook_secret().expect_err("no secret");
        assert!(err.to_string().contains("HOOKBUS_GITHUB__WEBHOOK_SECRET"), "{err}");
        let s = load(&[("HOOKBUS_GITHUB__WEBHOOK_SECRET", "s3cret")]).expect("loads");
        assert_eq!(s.github.require_webhook_secret().map(Secret::expose).ok(), Some("s3cret"));
        assert!(s.github.previous_webhook_secret.is_empty(), "none outside a rotation");
        let s = load(&[("HOOKBUS_GITHUB__WEBHOOK_SECRET", "new"), ("HOOKBUS_GITHUB__PREVIOUS_WEBHOOK_SECRET", "old")])
            .expect("loads");
        assert_eq!(s.github.previous_webhook_secret.expose(), "old");
        assert!(!format!("{s:?}").contains("old\""), "never printed");
    }

    #[test]
    fn bad_gateway_values_name_the_setting() {
        let err = load(&[("HOOKBUS_GATEWAY__MAX_BODY_BYTES", "0")]).expect_err("zero");
        assert!(err.to_string().contains("gateway.max_body_bytes"), "{err}");
        let err = load(&[("HOOKBUS_GATEWAY__DELIVERY_RETENTION_MS", "10")]).expect_err("short");
        assert!(err.to_string().contains("gateway.delivery_retention_ms"), "{err}");
        let err = load(&[("HOOKBUS_GITHUB__API_URL", "ftp://x")]).expect_err("bad url");
        assert!(err.to_string().contains("HOOKBUS_GITHUB__API_URL"), "{err}");
        let err = load(&[("HOOKBUS_GATEWAY__THREADS", "100000")]).expect_err("too many");
        assert!(err.to_string().contains("HOOKBUS_GATEWAY__THREADS"), "{err}");
    }

    #[test]
    fn gateway_threads_default_to_one_per_cpu_up_to_the_cap() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(load(&[]).expect("defaults load").gateway.serving_threads(), cpus.min(DEFAULT_GATEWAY_THREADS_CAP));
        let s = load(&[("HOOKBUS_GATEWAY__THREADS", "3")]).expect("loads");
        assert_eq!(s.gateway.serving_threads(), 3);
    }

    #[test]
    fn normalise_repositories_are_a_comma_separated_allow_list() {
        assert!(load(&[]).expect("defaults load").normalise.repositories.is_empty());
        let s = load(&[("HOOKBUS_NORMALISE__REPOSITORIES", " Octo/Repo, acme/widgets ,")]).expect("loads");
        let repositories: Vec<&str> = s.normalise.repositories.iter().collect();
        assert_eq!(repositories, ["octo/repo", "acme/widgets"]);
        assert!(s.normalise.repositories.allows("OCTO/repo"));
        assert!(!s.normalise.repositories.allows("octo/other"));
        let err = load(&[("HOOKBUS_NORMALISE__REPOSITORIES", "octo")]).expect_err("not owner/name");
        assert!(err.to_string().contains("HOOKBUS_NORMALISE__REPOSITORIES"), "{err}");
    }

    #[test]
    fn contents_api_mode_needs_an_owner_name_repository_named_in_the_error() {
        assert_eq!(load(&[]).expect("defaults load").git.mode, GitMode::Git);
        let err = load(&[("HOOKBUS_GIT__MODE", "contents_api")]).expect_err("no repository");
        assert!(err.to_string().contains("HOOKBUS_GIT__CONTENTS_REPOSITORY"), "{err}");
        let err = load(&[("HOOKBUS_GIT__MODE", "contents_api"), ("HOOKBUS_GIT__CONTENTS_REPOSITORY", "acme")])
            .expect_err("not owner/name");
        assert!(err.to_string().contains("git.contents_repository"), "{err}");
        assert!(load(&[("HOOKBUS_GIT__MODE", "svn")]).is_err());
        let s = load(&[("HOOKBUS_GIT__MODE", "contents_api"), ("HOOKBUS_GIT__CONTENTS_REPOSITORY", "acme/records")])
            .expect("loads");
        assert_eq!((s.git.mode, s.git.contents_repository.as_str()), (GitMode::ContentsApi, "acme/records"));
        assert!(s.git.require_remote().is_err(), "the remote stays unset: contents-API mode does not use it");
    }

    #[test]
    fn git_settings_default_and_come_from_the_environment() {
        let s = load(&[]).expect("defaults load");
        assert_eq!(s.git.branch, "main");
        assert_eq!(s.git.push_window_ms, 50);
        assert!(s.git.require_remote().is_err());
        let s = load(&[
            ("HOOKBUS_GIT__REMOTE", "https://github.com/acme/records.git"),
            ("HOOKBUS_GIT__BRANCH", "records/live"),
            ("HOOKBUS_GIT__WORKDIR", "/var/hookbus/clone"),
            ("HOOKBUS_GIT__PUSH_WINDOW_MS", "0"),
        ])
        .expect("loads");
        assert_eq!(s.git.require_remote().expect("set"), "https://github.com/acme/records.git");
        assert_eq!(s.git.branch, "records/live");
        assert_eq!(s.git.workdir, PathBuf::from("/var/hookbus/clone"));
        assert_eq!(s.git.push_window_ms, 0);
    }

    #[test]
    fn bad_git_settings_name_the_setting() {
        let err = load(&[("HOOKBUS_GIT__REMOTE", "ssh://git@github.com/a/b")]).expect_err("ssh");
        assert!(err.to_string().contains("HOOKBUS_GIT__REMOTE"), "{err}");
        let err = load(&[("HOOKBUS_GIT__BRANCH", "has space")]).expect_err("bad branch");
        assert!(err.to_string().contains("HOOKBUS_GIT__BRANCH"), "{err}");
        let err = load(&[("HOOKBUS_GIT__BRANCH", "a..b")]).expect_err("bad branch");
        assert!(err.to_string().contains("HOOKBUS_GIT__BRANCH"), "{err}");
        let err = load(&[("HOOKBUS_GIT__COMMITTER_EMAIL", "nobody")]).expect_err("bad email");
        assert!(err.to_string().contains("git.committer_email"), "{err}");
        let err = load(&[("HOOKBUS_GIT__PUSH_WINDOW_MS", "soon")]).expect_err("not a number");
        assert!(err.to_string().contains("git.push_window_ms"), "{err}");
    }

    #[test]
    fn notify_subscribers_come_from_json_in_the_environment() {
        let s = load(&[]).expect("defaults load");
        assert!(s.notify.subscribers.is_empty());
        assert!(s.notify.alert_webhook().is_none());
        assert_eq!(s.notify.alert_window_ms, 60_000);
        let json = r#"[{"url": "https://a.example/hook", "secret": "s1", "kinds": ["issue"]},
            {"name": "crm", "url": "http://b.example", "secret": "s2", "repositories": ["Octo/Repo"], "timeout_ms": 500}]"#;
        let s = load(&[
            ("HOOKBUS_NOTIFY__SUBSCRIBERS", json),
            ("HOOKBUS_NOTIFY__ALERT_WEBHOOK", "https://hooks.slack.example/T/secretpath"),
            ("HOOKBUS_NOTIFY__ALERT_WINDOW_MS", "250"),
        ])
        .expect("loads");
        let subs: Vec<&SubscriberSettings> = s.notify.subscribers.iter().collect();
        assert_eq!(subs.len(), 2);
        assert_eq!((subs[0].name.as_str(), subs[0].timeout_ms), ("0", 10_000));
        assert!(subs[0].wants("any/repo", "issue") && !subs[0].wants("any/repo", "comment"));
        assert_eq!(s.notify.subscribers.get("crm").map(|c| c.timeout_ms), Some(500));
        assert!(subs[1].wants("octo/repo", "comment") && !subs[1].wants("octo/other", "comment"));
        assert_eq!(s.notify.alert_window_ms, 250);
        let printed = format!("{s:?}");
        assert!(!printed.contains("secretpath") && !printed.contains("\"s2\""), "{printed}");
    }

    #[test]
    fn notify_subscribers_come_from_a_toml_array_of_tables() {
        let dir = tempdir_for("notify");
        let file = dir.join("hookbus.toml");
        let toml = "[[notify.subscribers]]\nname = \"ops\"\nurl = \"https://ops.example/h\"\nsecret = \"x\"\n";
        std::fs::write(&file, toml).expect("write");
        let path = file.to_string_lossy().to_string();
        let s = load(&[("HOOKBUS_CONFIG", &path)]).expect("loads");
        assert_eq!(s.notify.subscribers.get("ops").map(|o| o.url.as_str()), Some("https://ops.example/h"));
    }

    #[test]
    fn redis_cluster_takes_seed_nodes_and_refuses_what_a_cluster_cannot_do() {
        let seeds = "redis://10.0.0.1:7000, redis://10.0.0.2:7000";
        let s = load(&[("REDIS_URL", seeds), ("HOOKBUS_REDIS__CLUSTER", "true")]).expect("loads");
        assert!(s.redis.cluster);
        assert_eq!(s.redis.nodes(), vec!["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
        let single = load(&[("REDIS_URL", "redis://:pa,ss@host:1")]).expect("a comma in a single URL is not split");
        assert_eq!(single.redis.nodes(), vec!["redis://:pa,ss@host:1"]);

        let bad = |pairs: &[(&str, &str)]| load(pairs).expect_err("refused").to_string();
        let err = bad(&[("REDIS_URL", seeds)]);
        assert!(err.contains("redis.url (REDIS_URL)"), "several nodes without cluster: {err}");
        let err = bad(&[("REDIS_URL", "redis://a:1,rediss://b:2"), ("HOOKBUS_REDIS__CLUSTER", "true")]);
        assert!(err.contains("redis.url") && err.contains("all use"), "{err}");
        let err = bad(&[("REDIS_URL", "redis://:pw@a:1/3"), ("HOOKBUS_REDIS__CLUSTER", "true")]);
        assert!(err.contains("redis.url") && err.contains("database 0") && !err.contains("pw"), "{err}");
        let err = bad(&[("REDIS_URL", " , "), ("HOOKBUS_REDIS__CLUSTER", "true")]);
        assert!(err.contains("redis.url"), "{err}");
        let err = bad(&[("HOOKBUS_REDIS__CLUSTER", "maybe")]);
        assert!(err.contains("redis.cluster") || err.contains("HOOKBUS_REDIS__CLUSTER"), "{err}");
        assert!(load(&[("REDIS_URL", "redis://a:1/0"), ("HOOKBUS_REDIS__CLUSTER", "true")]).is_ok());
    }

    fn tempdir_for(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hookbus-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn bad_notify_settings_name_the_field() {
        let bad = |json: &str| load(&[("HOOKBUS_NOTIFY__SUBSCRIBERS", json)]).expect_err(json).to_string();
        let err = bad(r#"[{"url": "ftp://x", "secret": "s"}]"#);
        assert!(err.contains("notify.subscribers[0].url") && err.contains("HOOKBUS_NOTIFY__SUBSCRIBERS"), "{err}");
        let err = bad(r#"[{"url": "http://x", "secret": "s"}, {"url": "http://y", "secret": ""}]"#);
        assert!(err.contains("notify.subscribers[1].secret"), "{err}");
        let err = bad(r#"[{"url": "http://x", "secret": "s", "kinds": ["wiki"]}]"#);
        assert!(err.contains("notify.subscribers[0].kinds"), "{err}");
        let err = bad(r#"[{"url": "http://x", "secret": "s", "timeout": 5}]"#);
        assert!(err.contains("HOOKBUS_NOTIFY__SUBSCRIBERS") && err.contains("timeout"), "{err}");
        let err = bad(
            r#"[{"url": "http://x", "secret": "s", "name": "a"}, {"url": "http://y", "secret": "t", "name": "a"}]"#,
        );
        assert!(err.contains("notify.subscribers[1].name"), "{err}");
        let err = bad("not json");
        assert!(err.contains("HOOKBUS_NOTIFY__SUBSCRIBERS"), "{err}");
        let err = load(&[("HOOKBUS_NOTIFY__ALERT_WEBHOOK", "hooks.example")]).expect_err("bad url").to_string();
        assert!(err.contains("HOOKBUS_NOTIFY__ALERT_WEBHOOK") && !err.contains("hooks.example"), "{err}");
        let err = load(&[("HOOKBUS_NOTIFY__ALERT_WINDOW_MS", "0")]).expect_err("zero").to_string();
        assert!(err.contains("notify.alert_window_ms"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let s = load(&[("REDIS_URL", "redis://:hunter2@host:1")]).expect("loads");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
