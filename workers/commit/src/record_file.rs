//! What one operation does to its record's file: the path (SPEC §6
//! "commit"), the bytes, the commit message and the author. Pure functions;
//! no git here.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::CommitError;
use crate::wire::{ApplyPayload, Direction, Effect, ResourceKind};

/// Trailer naming the operation a commit carries; what makes redelivery
/// idempotent.
pub const OPERATION_TRAILER: &str = "Hookbus-Operation";
/// Trailer naming the GitHub delivery (or `none` for a client's change).
pub const DELIVERY_TRAILER: &str = "Hookbus-Delivery";

/// What the operation wants the file to become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// The file's new bytes.
    Write(Vec<u8>),
    /// No file (a deletion).
    Delete,
    /// Nothing to write, and why (reported as the outcome's reason).
    Skip(String),
    /// The file holds a newer record than the operation: nothing to write
    /// and, for a client's change, nothing to write back to GitHub either.
    Superseded(String),
}

/// The record file's path, or `None` for an operation that has no file yet
/// (an outbound create: GitHub assigns the number).
pub fn path_for(op: &ApplyPayload) -> Result<Option<String>, CommitError> {
    let (owner, repo) = op
        .repository
        .split_once('/')
        .filter(|(o, r)| safe_segment(o) && safe_segment(r))
        .ok_or_else(|| CommitError::payload(op, format!("repository {:?} is not \"owner/name\"", op.repository)))?;
    let (dir, number) = match op.kind {
        ResourceKind::Issue | ResourceKind::PullRequest => ("issues", op.number),
        ResourceKind::Comment => ("comments", op.id),
        ResourceKind::Release => ("releases", op.id),
    };
    match number {
        Some(n) => Ok(Some(format!("repos/{owner}/{repo}/{dir}/{n}.json"))),
        None if op.direction == Direction::Outbound => Ok(None),
        None => Err(CommitError::payload(op, format!("a {dir} operation needs its number or id"))),
    }
}

fn safe_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// What `op` makes of the file whose current bytes are `current`.
pub fn desired(op: &ApplyPayload, path: &str, current: Option<&[u8]>) -> Result<Desired, CommitError> {
    if op.effect == Effect::Remove {
        return Ok(Desired::Delete);
    }
    match op.direction {
        Direction::Inbound => match &op.record {
            Some(record @ Value::Object(_)) => match newer_in_file(record, current) {
                Some((ours, theirs)) => Ok(Desired::Superseded(format!(
                    "{path} holds a newer record (updated_at {theirs}) than this operation's ({ours}); not written \
                     over it"
                ))),
                None => Ok(Desired::Write(file_bytes(record))),
            },
            _ => Err(CommitError::payload(op, "an inbound upsert needs its record (a map)")),
        },
        Direction::Outbound => {
            let Some(current) = current else {
                return Ok(Desired::Skip(format!(
                    "no file at {path} yet; it arrives with GitHub's webhook after the write-back"
                )));
            };
            let mut record: Value = serde_json::from_slice(current)
                .map_err(|err| CommitError::Record(format!("{path} is not JSON: {err}")))?;
            if let Some(theirs) = changed_on_github_after(&record, op.updated_at) {
                return Ok(Desired::Superseded(format!(
                    "{path} changed on GitHub (updated_at {theirs}) after this change was accepted; not applied \
                     over it, nor written back"
                )));
            }
            let Value::Object(fields) = &mut record else {
                return Err(CommitError::Record(format!("{path} is not a JSON object")));
            };
            for (name, value) in op.changes.iter().flatten() {
                fields.insert(name.clone(), value.clone());
            }
            Ok(Desired::Write(file_bytes(&record)))
        }
    }
}

/// GitHub's `updated_at` of `record` and of the file's record, when the
/// file's is the later one. Reconcile passes on only the newest operation
/// of a resource, and the bus hands out one resource's messages in order;
/// an older record reaches this stage only from outside that order, e.g.
/// a dead letter re-driven after newer operations were committed. Without
/// both times (releases carry none) nothing is compared.
fn newer_in_file(record: &Value, current: Option<&[u8]>) -> Option<(String, String)> {
    let parse = |value: &Value| {
        let text = value.get("updated_at")?.as_str()?;
        let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
        Some((at, text.to_string()))
    };
    let (ours, ours_text) = parse(record)?;
    let file: Value = serde_json::from_slice(current?).ok()?;
    let (theirs, theirs_text) = parse(&file)?;
    (theirs > ours).then_some((ours_text, theirs_text))
}

/// The file's `updated_at` when it is later than `accepted_ms`, the time a
/// client's change was accepted: reconcile's rule (the newest wins, GitHub's
/// time against the acceptance time) applied at the file, for a change that
/// reaches this stage from outside reconcile's order (a re-driven dead
/// letter). Whole seconds on GitHub's side, so a GitHub edit within the
/// same second as the acceptance does not count as later.
fn changed_on_github_after(file: &Value, accepted_ms: i64) -> Option<String> {
    let text = file.get("updated_at")?.as_str()?;
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let at_ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()?;
    (at_ms / 1_000 > accepted_ms.div_euclid(1_000)).then(|| text.to_string())
}

/// Pretty JSON (two-space indent), keys sorted at every level, trailing
/// newline: the same bytes normalise hashes. Sorted here rather than relying
/// on `serde_json::Map` being a `BTreeMap`, which a feature elsewhere in the
/// build could change.
pub fn file_bytes(value: &Value) -> Vec<u8> {
    // Serializing a JSON value to a Vec cannot fail.
    let mut bytes = serde_json::to_vec_pretty(&Sorted(value)).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// SHA-256 of a file's bytes, lowercase hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    out.serialize_entry(k, &Sorted(v))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Sorted(item))?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// The commit author: the actor, with GitHub's noreply address when no
/// email is known.
pub fn author(op: &ApplyPayload) -> (String, String) {
    let actor = &op.actor;
    let name = actor.name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| actor.login.clone());
    let email = match (&actor.email, actor.id) {
        (Some(email), _) if email.contains('@') => email.clone(),
        (_, Some(id)) => format!("{id}+{}@users.noreply.github.com", actor.login),
        (_, None) => format!("{}@users.noreply.github.com", actor.login),
    };
    (name, email)
}

/// Subject, blank line, trailers. `content` is the file's new content (for
/// the title), if any.
pub fn message(op: &ApplyPayload, content: Option<&Value>) -> String {
    let title = content.or(op.record.as_ref()).and_then(|r| r.get("title")).and_then(Value::as_str);
    let tag = content.or(op.record.as_ref()).and_then(|r| r.get("tag")).and_then(Value::as_str);
    let what = match op.kind {
        ResourceKind::Issue | ResourceKind::PullRequest => {
            let number = op.number.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
            match title {
                Some(title) => format!("{}#{number}: {}", op.repository, one_line(title)),
                None => format!("{}#{number}", op.repository),
            }
        }
        ResourceKind::Comment => {
            let id = op.id.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
            match op.number {
                Some(n) => format!("{} comment {id} on #{n}", op.repository),
                None => format!("{} comment {id}", op.repository),
            }
        }
        ResourceKind::Release => match tag {
            Some(tag) => format!("{} release {}", op.repository, one_line(tag)),
            None => format!("{} release {}", op.repository, op.id.unwrap_or_default()),
        },
    };
    let delivery = op.delivery.as_deref().unwrap_or("none");
    format!(
        "{}.{} {what}\n\n{OPERATION_TRAILER}: {}\n{DELIVERY_TRAILER}: {delivery}\n",
        op.source, op.action, op.operation
    )
}

fn one_line(text: &str) -> String {
    let line: String = text.lines().next().unwrap_or_default().chars().take(120).collect();
    line.trim().to_string()
}

/// The operation a commit message carries, from its trailer.
pub fn operation_of(message: &str) -> Option<&str> {
    let prefix = format!("{OPERATION_TRAILER}: ");
    message.lines().rev().find_map(|line| line.strip_prefix(prefix.as_str())).map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Actor;

    fn op(kind: ResourceKind, direction: Direction) -> ApplyPayload {
        ApplyPayload {
            operation: "gh-1".into(),
            direction,
            key: "github:octo/repo:issue:12".into(),
            repository: "octo/repo".into(),
            repository_enabled: true,
            kind,
            action: "edited".into(),
            effect: Effect::Upsert,
            updated_at: 1_700_000_000_000,
            actor: Actor { login: "octocat".into(), id: Some(583231), name: None, email: None },
            delivery: Some("d-1".into()),
            source: "issues".into(),
            number: Some(12),
            id: Some(99),
            record: Some(serde_json::json!({"title": "Hello\nworld", "number": 12})),
            changes: None,
        }
    }

    #[test]
    fn paths_follow_the_spec() {
        assert_eq!(
            path_for(&op(ResourceKind::Issue, Direction::Inbound)).unwrap().unwrap(),
            "repos/octo/repo/issues/12.json"
        );
        assert_eq!(
            path_for(&op(ResourceKind::PullRequest, Direction::Inbound)).unwrap().unwrap(),
            "repos/octo/repo/issues/12.json"
        );
        assert_eq!(
            path_for(&op(ResourceKind::Comment, Direction::Inbound)).unwrap().unwrap(),
            "repos/octo/repo/comments/99.json"
        );
        assert_eq!(
            path_for(&op(ResourceKind::Release, Direction::Inbound)).unwrap().unwrap(),
            "repos/octo/repo/releases/99.json"
        );
        let mut create = op(ResourceKind::Issue, Direction::Outbound);
        create.number = None;
        assert_eq!(path_for(&create).unwrap(), None);
    }

    #[test]
    fn a_repository_that_could_escape_the_tree_is_refused() {
        let mut bad = op(ResourceKind::Issue, Direction::Inbound);
        bad.repository = "../etc".into();
        assert!(path_for(&bad).is_err());
    }

    #[test]
    fn file_bytes_sort_keys_at_every_level_with_a_trailing_newline() {
        let value = serde_json::json!({"b": 1, "a": {"z": [ {"y": 1, "x": 2} ], "c": null}});
        let text = String::from_utf8(file_bytes(&value)).unwrap();
        assert_eq!(
            text,
            "{\n  \"a\": {\n    \"c\": null,\n    \"z\": [\n      {\n        \"x\": 2,\n        \"y\": 1\n      }\n    ]\n  },\n  \"b\": 1\n}\n"
        );
    }

    #[test]
    fn author_falls_back_to_the_noreply_address() {
        let mut o = op(ResourceKind::Issue, Direction::Inbound);
        assert_eq!(author(&o), ("octocat".into(), "583231+octocat@users.noreply.github.com".into()));
        o.actor.id = None;
        assert_eq!(author(&o).1, "octocat@users.noreply.github.com");
        o.actor.name = Some("Mona".into());
        o.actor.email = Some("mona@example.com".into());
        assert_eq!(author(&o), ("Mona".into(), "mona@example.com".into()));
    }

    #[test]
    fn message_has_a_subject_and_both_trailers() {
        let o = op(ResourceKind::Issue, Direction::Inbound);
        let m = message(&o, None);
        assert_eq!(m, "issues.edited octo/repo#12: Hello\n\nHookbus-Operation: gh-1\nHookbus-Delivery: d-1\n");
        assert_eq!(operation_of(&m), Some("gh-1"));
    }

    #[test]
    fn an_inbound_record_older_than_the_file_is_not_written_over_it() {
        let mut o = op(ResourceKind::Issue, Direction::Inbound);
        o.record = Some(serde_json::json!({"title": "Old", "number": 12, "updated_at": "2026-11-23T10:00:00Z"}));
        let newer =
            file_bytes(&serde_json::json!({"title": "New", "number": 12, "updated_at": "2026-11-23T10:00:05Z"}));
        let Desired::Superseded(reason) = desired(&o, "p", Some(&newer)).unwrap() else { panic!("superseded") };
        assert!(reason.contains("2026-11-23T10:00:05Z") && reason.contains("2026-11-23T10:00:00Z"), "{reason}");
        // The same second, an older file, no file, no time: written.
        for current in [
            Some(file_bytes(&serde_json::json!({"title": "Tie", "updated_at": "2026-11-23T10:00:00Z"}))),
            Some(file_bytes(&serde_json::json!({"title": "Older", "updated_at": "2026-11-22T10:00:00Z"}))),
            None,
            Some(file_bytes(&serde_json::json!({"title": "Release, no time"}))),
            Some(b"not json".to_vec()),
        ] {
            assert!(matches!(desired(&o, "p", current.as_deref()).unwrap(), Desired::Write(_)), "{current:?}");
        }
    }

    #[test]
    fn outbound_changes_are_set_on_the_current_file() {
        let mut o = op(ResourceKind::Issue, Direction::Outbound);
        o.changes = Some([("title".to_string(), serde_json::json!("New"))].into_iter().collect());
        let current = file_bytes(&serde_json::json!({"title": "Old", "number": 12}));
        let Desired::Write(bytes) = desired(&o, "p", Some(&current)).unwrap() else { panic!("a write") };
        assert_eq!(bytes, file_bytes(&serde_json::json!({"title": "New", "number": 12})));
        assert!(matches!(desired(&o, "p", None).unwrap(), Desired::Skip(_)));
        // Accepted at 2023-11-14T22:13:20Z (op's updated_at): a file GitHub
        // changed a second later supersedes it; the same second does not.
        let later = file_bytes(&serde_json::json!({"title": "Old", "updated_at": "2023-11-14T22:13:21Z"}));
        let Desired::Superseded(reason) = desired(&o, "p", Some(&later)).unwrap() else { panic!("superseded") };
        assert!(reason.contains("2023-11-14T22:13:21Z"), "{reason}");
        let same = file_bytes(&serde_json::json!({"title": "Old", "updated_at": "2023-11-14T22:13:20Z"}));
        assert!(matches!(desired(&o, "p", Some(&same)).unwrap(), Desired::Write(_)));
    }
}
