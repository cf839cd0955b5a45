//! Asking GitHub to send again the webhooks it failed to deliver.
//!
//! GitHub does not retry a delivery by itself: one that timed out or was
//! answered 5xx — the gateway's 503 while Redis was away — stays failed
//! until someone redelivers it. With `github.redeliver_hooks` set, the
//! gateway does that: every `github.redeliver_interval_ms` it lists each
//! hook's recent deliveries (`GET /…/hooks/<id>/deliveries`, newest first,
//! back to `github.redeliver_window_ms`) and asks for another attempt
//! (`POST /…/deliveries/<attempt>/attempts`) of every delivery that
//!
//! - never got a 2xx answer in any attempt,
//! - last failed with no answer (timeout, connection refused: status 0) or
//!   a 5xx (a 4xx is the gateway refusing on purpose, with a reason; another
//!   attempt would be refused the same way),
//! - was not accepted since all the same (no mark for its
//!   `X-GitHub-Delivery`: a reply can be lost after Redis stored the
//!   message), and
//! - has had fewer than [`MAX_ATTEMPTS`] attempts (a delivery that keeps
//!   failing is left to a person, logged once).
//!
//! A repository's or an organisation's webhook is asked about with the
//! workers' credentials (`github.token`, or the App's installation); a
//! GitHub App's own webhook (`app/hook`, whose endpoints
//! are `/app/hook/deliveries…`) only answers the App itself, so it is asked
//! about with a JWT signed by the App's private key.
//!
//! One sweep per interval across every gateway process: whoever sets the
//! `<prefix>:redeliver:lock` key runs it. A redelivery keeps the delivery
//! id, so the gateway's marks make even a repeated one store nothing twice.
//!
//! A sweep reads only what is new: the attempts after the newest one the
//! last sweep examined (`<prefix>:{redeliver}:seen:<hook>`), usually one
//! page. When there is more than [`MAX_PAGES`] of it — the gateway was down
//! while a busy webhook kept failing — the sweep remembers where it stopped
//! (`<prefix>:{redeliver}:resume:<hook>`) and the next sweeps read on from
//! there, down to what was examined before, until nothing in the window is
//! left unread. How often hookbus asked for each delivery is counted
//! (`<prefix>:{redeliver}:asked:<delivery>`), so that a delivery whose
//! redeliveries keep failing stops at [`MAX_ATTEMPTS`] however many sweeps
//! saw it. `hookbus redeliver` reads the whole window instead (up to the
//! same page limit) and leaves where the sweeps are alone.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use hookbus_bus::redis::{RedisConnection, RedisTarget};
use hookbus_bus::Shutdown;
use hookbus_config::{ConfigError, Settings, APP_HOOK};
use serde::{Deserialize, Serialize};

use crate::intake::{mark_key, Mark};

/// Attempts (the first delivery included) after which a failing delivery is
/// left alone.
pub const MAX_ATTEMPTS: usize = 5;
/// Pages of 100 attempts read per hook and sweep at most: a sweep a
/// minute then costs at most 600 of the token's 5,000 requests an hour
/// (in practice one page a minute: only what is new is read).
pub const MAX_PAGES: usize = 10;
/// Deliveries remembered as already logged as left alone; past it the
/// memory starts again (and each is logged once more).
const REPORTED_KEPT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    /// A setting is missing or wrong (exit 2, as for any bad configuration).
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Setup(String),
    #[error("GitHub API {what}: {reason}")]
    Github { what: String, reason: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One attempt at delivering, as `GET …/deliveries` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attempt {
    /// The attempt's id: what a redelivery is asked for.
    pub id: u64,
    /// `X-GitHub-Delivery`: the same for every attempt of one delivery.
    pub guid: String,
    pub delivered_at: String,
    /// The answer's status; 0 when there was none (timeout, refused).
    #[serde(default)]
    pub status_code: u16,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Whether this process ran it (one per interval across all of them).
    pub ran: bool,
    /// Delivery ids whose redelivery GitHub accepted (with `dry_run`: that
    /// would have been asked for).
    pub redelivered: Vec<String>,
    /// Nothing was asked of GitHub: the sweep only looked.
    pub dry_run: bool,
    /// Failed deliveries left alone: accepted since, refused on purpose, or
    /// out of attempts.
    pub skipped: usize,
    /// Hooks that could not be swept, with why.
    pub failed: Vec<String>,
}

/// Per failed delivery: the attempt to redeliver, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Redeliver { guid: String, attempt: u64 },
    Refused { guid: String, status: u16 },
    OutOfAttempts { guid: String, attempts: usize },
}

/// The decisions for one hook's listed attempts (any order), oldest
/// delivery first. Deliveries that got a 2xx once need nothing.
pub fn decide(attempts: &[Attempt]) -> Vec<Decision> {
    let mut by_guid: BTreeMap<&str, Vec<&Attempt>> = BTreeMap::new();
    for attempt in attempts {
        by_guid.entry(attempt.guid.as_str()).or_default().push(attempt);
    }
    let mut decisions: Vec<(u64, Decision)> = Vec::new();
    for (guid, mut tries) in by_guid {
        if tries.iter().any(|t| (200..300).contains(&t.status_code)) {
            continue;
        }
        // Attempt ids grow with time: the last one is the latest answer.
        tries.sort_by_key(|t| t.id);
        let (first, last) = (tries[0].id, tries[tries.len() - 1]);
        let guid = guid.to_string();
        let decision = if last.status_code != 0 && last.status_code < 500 {
            Decision::Refused { guid, status: last.status_code }
        } else if tries.len() >= MAX_ATTEMPTS {
            Decision::OutOfAttempts { guid, attempts: tries.len() }
        } else {
            Decision::Redeliver { guid, attempt: last.id }
        };
        decisions.push((first, decision));
    }
    decisions.sort_by_key(|(first, _)| *first);
    decisions.into_iter().map(|(_, decision)| decision).collect()
}

/// The sweeper of one gateway process.
pub struct Redeliverer {
    /// With the workers' credentials: for repositories' and organisations'
    /// webhooks.
    api: Option<hookbus_github::Github>,
    /// Signed in as the App: for `app/hook`.
    app_client: Option<std::sync::Arc<octocrab::Octocrab>>,
    hooks: Vec<String>,
    conn: RedisConnection,
    prefix: String,
    interval: Duration,
    window: Duration,
    /// Deliveries already logged as left to a person (logged once).
    reported: Mutex<HashSet<String>>,
}

impl Redeliverer {
    /// From the settings; `None` when no hook is configured.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, RedeliverError> {
        let hooks = settings.github.redeliver_hooks().map_err(|e| RedeliverError::Setup(e.to_string()))?;
        if hooks.is_empty() {
            return Ok(None);
        }
        Self::for_hooks(settings, hooks).map(Some)
    }

    /// For the given hooks (checked API paths), with the rest of `settings`:
    /// the credentials they need must be there, and the App's key must sign.
    pub fn for_hooks(settings: &Settings, hooks: Vec<String>) -> Result<Self, RedeliverError> {
        let github = &settings.github;
        github.check_redeliver_credentials(&hooks)?;
        let timeout = Duration::from_secs(10);
        let setup = |e: hookbus_github::GithubError| RedeliverError::Setup(e.to_string());
        let api = match hookbus_github::Credentials::from_settings(github)? {
            Some(credentials) if hooks.iter().any(|hook| hook != APP_HOOK) => {
                Some(hookbus_github::Github::new(&github.api_url, credentials, timeout).map_err(setup)?)
            }
            _ => None,
        };
        let app_client = match hooks.iter().any(|hook| hook == APP_HOOK) {
            true => {
                let app = hookbus_github::App::from_settings(github)?;
                Some(std::sync::Arc::new(hookbus_github::app_client(&github.api_url, &app, timeout).map_err(setup)?))
            }
            false => None,
        };
        let conn = RedisConnection::open(&RedisTarget::from_settings(&settings.redis), timeout)
            .map_err(|e| RedeliverError::Setup(e.to_string()))?;
        Ok(Redeliverer {
            api,
            app_client,
            hooks,
            conn,
            prefix: settings.bus.prefix.clone(),
            interval: Duration::from_millis(settings.github.redeliver_interval_ms),
            window: Duration::from_millis(settings.github.redeliver_window_ms),
            reported: Mutex::new(HashSet::new()),
        })
    }

    /// Sweeps every interval until `shutdown`. A failed sweep is logged and
    /// tried again at the next interval.
    pub async fn run(self, shutdown: Shutdown) {
        tracing::info!(hooks = ?self.hooks, interval_ms = self.interval.as_millis() as u64, "redelivering failed webhook deliveries");
        loop {
            match self.sweep().await {
                Ok(report) if report.ran && !report.redelivered.is_empty() => {
                    tracing::info!(
                        redelivered = report.redelivered.len(),
                        skipped = report.skipped,
                        "redelivery sweep"
                    );
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "redelivery sweep failed; trying again next interval"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One sweep, if no other process ran one within the interval.
    pub async fn sweep(&self) -> Result<SweepReport, RedeliverError> {
        let mut conn = self.conn.clone();
        let won: Option<String> = redis::cmd("SET")
            .arg(format!("{}:redeliver:lock", self.prefix))
            .arg(hookbus_bus::envelope::now_ms())
            .arg("NX")
            .arg("PX")
            .arg(self.interval.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        if won.is_none() {
            return Ok(SweepReport::default());
        }
        Ok(self.sweep_hooks(false, true, MAX_PAGES).await)
    }

    /// One sweep now over the whole window, whoever swept last (an
    /// operator's `hookbus redeliver`), reading at most `pages` pages of 100
    /// attempts per hook, newest first; with `dry_run`, only what it would
    /// ask for.
    pub async fn sweep_now(&self, dry_run: bool, pages: usize) -> SweepReport {
        self.sweep_hooks(dry_run, false, pages).await
    }

    async fn sweep_hooks(&self, dry_run: bool, incremental: bool, pages: usize) -> SweepReport {
        let mut report = SweepReport { ran: true, dry_run, ..SweepReport::default() };
        for hook in &self.hooks {
            // One hook GitHub will not list (a typo, a token without access)
            // does not keep the others from being swept.
            if let Err(err) = self.sweep_hook(hook, incremental, pages, &mut report).await {
                tracing::warn!(hook = %hook, error = %err, "redelivery sweep of a hook failed; trying again next interval");
                report.failed.push(format!("{hook}: {err}"));
            }
        }
        report
    }

    fn key(&self, what: &str, name: &str) -> String {
        format!("{}:{{redeliver}}:{what}:{name}", self.prefix)
    }

    async fn sweep_hook(
        &self,
        hook: &str,
        incremental: bool,
        pages: usize,
        report: &mut SweepReport,
    ) -> Result<(), RedeliverError> {
        let mut conn = self.conn.clone();
        let (seen_key, resume_key) = (self.key("seen", hook), self.key("resume", hook));
        let (seen, resume): (Option<u64>, Option<String>) = match incremental {
            true => redis::cmd("MGET").arg(&seen_key).arg(&resume_key).query_async(&mut conn).await?,
            false => (None, None),
        };
        let gaps: Vec<Gap> = resume.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default();
        let read = self.attempts(hook, seen, gaps, pages).await?;
        let decisions = decide(&read.attempts);
        // Which candidates were stored after all (one MGET of their marks,
        // all in the `{normalise}` slot), and how often each was asked for.
        let candidates: Vec<&str> = decisions
            .iter()
            .filter_map(|decision| match decision {
                Decision::Redeliver { guid, .. } => Some(guid.as_str()),
                _ => None,
            })
            .collect();
        let (mut stored, mut asked): (Vec<Option<String>>, Vec<Option<usize>>) = (Vec::new(), Vec::new());
        if !candidates.is_empty() {
            let marks: Vec<String> =
                candidates.iter().map(|guid| mark_key(&self.prefix, &Mark::Delivery(guid.to_string()))).collect();
            let counts: Vec<String> = candidates.iter().map(|guid| self.key("asked", guid)).collect();
            stored = redis::cmd("MGET").arg(&marks).query_async(&mut conn).await?;
            asked = redis::cmd("MGET").arg(&counts).query_async(&mut conn).await?;
        }
        let (mut stored, mut asked) = (stored.into_iter(), asked.into_iter());
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX).max(1);
        // What GitHub took, counted in one pipeline after the loop; a
        // refusal ends the loop, not before the counts are written.
        let (mut counted, mut asked_now) = (redis::pipe(), 0);
        let mut refused = None;
        for decision in decisions {
            let decision = match decision {
                Decision::Redeliver { guid, attempt } => {
                    let (mark, times) = (stored.next().flatten(), asked.next().flatten().unwrap_or(0));
                    if mark.is_some() {
                        report.skipped += 1;
                        continue;
                    }
                    match times + 1 >= MAX_ATTEMPTS {
                        // Asked for so often that, with the first delivery,
                        // it has had its attempts.
                        true => Decision::OutOfAttempts { guid, attempts: times + 1 },
                        false => Decision::Redeliver { guid, attempt },
                    }
                }
                other => other,
            };
            match decision {
                Decision::Redeliver { guid, attempt } => {
                    if !report.dry_run {
                        if let Err(err) = self.redeliver(hook, attempt).await {
                            refused = Some(err);
                            break;
                        }
                        let count = self.key("asked", &guid);
                        counted.cmd("INCR").arg(&count).ignore().cmd("PEXPIRE").arg(&count).arg(window_ms).ignore();
                        asked_now += 1;
                        tracing::info!(delivery = %guid, attempt, hook, "asked GitHub to redeliver a failed webhook");
                        crate::metrics::redelivery("asked");
                    }
                    report.redelivered.push(guid);
                }
                Decision::Refused { guid, status } => {
                    report.skipped += 1;
                    self.report_once(&guid, || {
                        tracing::info!(
                            delivery = %guid,
                            status,
                            hook,
                            "failed webhook not redelivered: the gateway refused it on purpose (its log says why)"
                        );
                    });
                }
                Decision::OutOfAttempts { guid, attempts } => {
                    report.skipped += 1;
                    self.report_once(&guid, || {
                        crate::metrics::redelivery("gave_up");
                        tracing::warn!(
                            delivery = %guid,
                            attempts,
                            hook,
                            "webhook still failing; not asked again: redeliver it from the webhook's Recent \
                             Deliveries once the cause is fixed"
                        );
                    });
                }
            }
        }
        if asked_now > 0 {
            let _: () = counted.query_async(&mut conn).await?;
        }
        if let Some(err) = refused {
            return Err(err);
        }
        // Only now, every redelivery asked for: a sweep cut short reads
        // the same attempts again.
        if incremental && !report.dry_run {
            let mut remember = redis::pipe();
            if let Some(newest) = read.newest {
                remember.cmd("SET").arg(&seen_key).arg(newest).arg("PX").arg(window_ms).ignore();
            }
            match read.gaps.is_empty() {
                true => remember.cmd("DEL").arg(&resume_key).ignore(),
                false => {
                    let gaps = serde_json::to_string(&read.gaps).unwrap_or_default();
                    tracing::info!(
                        hook,
                        gaps = read.gaps.len(),
                        "redelivery sweep read its page limit; the next sweeps read on where it stopped"
                    );
                    remember.cmd("SET").arg(&resume_key).arg(gaps).arg("PX").arg(window_ms).ignore()
                }
            };
            let _: () = remember.query_async(&mut conn).await?;
        }
        Ok(())
    }

    fn report_once(&self, guid: &str, log: impl FnOnce()) {
        let mut reported = self.reported.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if reported.len() >= REPORTED_KEPT {
            reported.clear();
        }
        if reported.insert(guid.to_string()) {
            log();
        }
    }

    /// The hook's attempts within the window that no sweep examined yet:
    /// those newer than `seen` (all of the window without it), then the
    /// `gaps` earlier sweeps left, newest first, at most `pages` pages in
    /// all.
    async fn attempts(
        &self,
        hook: &str,
        seen: Option<u64>,
        gaps: Vec<Gap>,
        mut pages: usize,
    ) -> Result<Read, RedeliverError> {
        let since = time::OffsetDateTime::now_utc() - self.window;
        let first = Gap { next: format!("/{hook}/deliveries?per_page=100"), until: seen, below: None };
        let mut read = Read { attempts: Vec::new(), newest: seen, gaps: Vec::new() };
        for gap in std::iter::once(first).chain(gaps) {
            if pages == 0 {
                read.gaps.push(gap);
                continue;
            }
            if let Some(rest) = self.read_gap(hook, gap, since, &mut pages, &mut read.attempts).await? {
                read.gaps.push(rest);
            }
        }
        read.newest = read.attempts.iter().map(|attempt| attempt.id).chain(seen).max();
        Ok(read)
    }

    /// Reads `gap` from its page down to its end (or the window's), while
    /// `pages` last; what is left of it, if they ran out.
    async fn read_gap(
        &self,
        hook: &str,
        gap: Gap,
        since: time::OffsetDateTime,
        pages: &mut usize,
        all: &mut Vec<Attempt>,
    ) -> Result<Option<Gap>, RedeliverError> {
        let mut next = Some(gap.next);
        let mut below = gap.below;
        while let Some(route) = next.take() {
            if *pages == 0 {
                return Ok(Some(Gap { next: route, until: gap.until, below }));
            }
            *pages -= 1;
            let what = format!("GET {route}");
            let client = self.client(hook).await?;
            let response = match client._get(route.as_str()).await {
                Ok(response) => response,
                Err(err) => return Err(self.not_sent(hook, what, err).await),
            };
            let status = response.status();
            let link = response.headers().get("link").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let text = client
                .body_to_string(response)
                .await
                .map_err(|e| RedeliverError::Github { what: what.clone(), reason: e.to_string() })?;
            if !status.is_success() {
                if status.as_u16() == 401 {
                    self.forget_installation(hook).await;
                }
                let reason = format!("{} {}", status.as_u16(), hookbus_github::error_message(&text));
                return Err(RedeliverError::Github { what, reason });
            }
            let page: Vec<Attempt> = serde_json::from_str(&text).map_err(|e| RedeliverError::Github {
                what: what.clone(),
                reason: format!("unexpected answer: {e}"),
            })?;
            let mut done = false;
            for attempt in page {
                // Read already, before the cut: a cursor that counts
                // positions shows it again once newer attempts came.
                if below.is_some_and(|below| attempt.id >= below) {
                    continue;
                }
                below = Some(attempt.id);
                let examined = gap.until.is_some_and(|until| attempt.id <= until);
                match delivered_at(&attempt.delivered_at) {
                    Some(at) if at < since => done = true,
                    _ if examined => done = true,
                    _ => all.push(attempt),
                }
            }
            if !done {
                next = link.as_deref().and_then(next_page);
            }
        }
        Ok(None)
    }

    /// The client that may ask about `hook`: the App's for `app/hook`; for
    /// the others, the workers' credentials' (the App's installation on
    /// the repository or organisation, when signed in as the App).
    async fn client(&self, hook: &str) -> Result<std::sync::Arc<octocrab::Octocrab>, RedeliverError> {
        let missing = || RedeliverError::Setup(format!("no GitHub credentials for {hook}"));
        if hook == APP_HOOK {
            return self.app_client.clone().ok_or_else(missing);
        }
        let api = self.api.as_ref().ok_or_else(missing)?;
        api.for_route(&format!("/{hook}/deliveries"))
            .await
            .map_err(|e| RedeliverError::Github { what: format!("the installation for {hook}"), reason: e.to_string() })
    }

    /// A request about `hook` that got no answer: perhaps no installation
    /// token could be minted, so the installation is looked up again (or
    /// its client made anew) before the next one.
    async fn not_sent(&self, hook: &str, what: String, err: octocrab::Error) -> RedeliverError {
        self.forget_installation(hook).await;
        RedeliverError::Github { what, reason: err.to_string() }
    }

    /// After GitHub refused the installation token a request about `hook`
    /// went with: it is not used again (`Github::forget_installation`).
    async fn forget_installation(&self, hook: &str) {
        if let (Some(api), false) = (&self.api, hook == APP_HOOK) {
            api.forget_installation(&format!("/{hook}/deliveries")).await;
        }
    }

    async fn redeliver(&self, hook: &str, attempt: u64) -> Result<(), RedeliverError> {
        let route = format!("/{hook}/deliveries/{attempt}/attempts");
        let what = format!("POST {route}");
        let client = self.client(hook).await?;
        let response = match client._post(route.as_str(), None::<&()>).await {
            Ok(response) => response,
            Err(err) => return Err(self.not_sent(hook, what, err).await),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.as_u16() == 401 {
            self.forget_installation(hook).await;
        }
        let text = client.body_to_string(response).await.unwrap_or_default();
        Err(RedeliverError::Github {
            what,
            reason: format!("{} {}", status.as_u16(), hookbus_github::error_message(&text)),
        })
    }
}

/// Attempts not read yet: from the page `next` down to the attempt
/// `until` (exclusive; `None`: the window's start), older than `below`
/// (the last one read before the cut).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Gap {
    next: String,
    until: Option<u64>,
    #[serde(default)]
    below: Option<u64>,
}

/// What a sweep read of a hook.
struct Read {
    attempts: Vec<Attempt>,
    /// The newest attempt examined, this sweep or before.
    newest: Option<u64>,
    /// What is left unread, newest first.
    gaps: Vec<Gap>,
}

fn delivered_at(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// The path and query of a `Link` header's `rel="next"` target.
fn next_page(link: &str) -> Option<String> {
    link.split(',').find(|part| part.contains("rel=\"next\"")).and_then(|part| {
        let url = part.split(';').next()?.trim().trim_start_matches('<').trim_end_matches('>');
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let path = after_scheme.find('/').map(|at| &after_scheme[at..])?;
        Some(path.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: u64, guid: &str, status_code: u16) -> Attempt {
        Attempt { id, guid: guid.into(), delivered_at: "2026-12-02T00:00:00Z".into(), status_code }
    }

    #[test]
    fn only_deliveries_that_never_got_through_and_may_get_through_are_redelivered() {
        let attempts = [
            attempt(1, "ok", 202),
            attempt(2, "down", 503),
            attempt(3, "timeout", 0),
            attempt(4, "refused", 401),
            attempt(5, "later-ok", 503),
            attempt(6, "later-ok", 202),
            attempt(7, "down", 502),
        ];
        assert_eq!(
            decide(&attempts),
            vec![
                Decision::Redeliver { guid: "down".into(), attempt: 7 },
                Decision::Redeliver { guid: "timeout".into(), attempt: 3 },
                Decision::Refused { guid: "refused".into(), status: 401 },
            ]
        );
        let stubborn: Vec<Attempt> = (1..=MAX_ATTEMPTS as u64).map(|id| attempt(id, "x", 503)).collect();
        assert_eq!(decide(&stubborn), vec![Decision::OutOfAttempts { guid: "x".into(), attempts: MAX_ATTEMPTS }]);
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let link = "<https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=100&cursor=v1_12>; rel=\"next\", \
                    <https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=100>; rel=\"first\"";
        assert_eq!(next_page(link).as_deref(), Some("/repos/o/r/hooks/1/deliveries?per_page=100&cursor=v1_12"));
        assert_eq!(next_page("<https://x/y>; rel=\"prev\""), None);
    }
}
