//! Canonical records: what commit-to-git writes as one file per resource.
//!
//! Fields are declared in alphabetical order, so serde writes them sorted;
//! nested values are structs declared the same way and lists are sorted by
//! the normaliser. [`file_bytes`] is therefore a canonical form, and
//! [`content_hash`] of two records is equal exactly when their files are
//! (the `keys_are_written_sorted` test guards the declaration order).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One synced resource, in the form written to git.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    PullRequest(PullRequestRecord),
    Issue(IssueRecord),
    Comment(CommentRecord),
    Release(ReleaseRecord),
}

/// An issue, `repos/<owner>/<repo>/issues/<number>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueRecord {
    /// Logins, sorted.
    pub assignees: Vec<String>,
    /// Login of whoever opened it.
    pub author: String,
    pub body: Option<String>,
    pub closed_at: Option<String>,
    pub created_at: String,
    pub html_url: String,
    /// Label names, sorted.
    pub labels: Vec<String>,
    pub locked: bool,
    pub milestone: Option<Milestone>,
    pub number: u64,
    /// `open` or `closed`.
    pub state: String,
    /// `completed`, `not_planned`, `reopened`, or null.
    pub state_reason: Option<String>,
    pub title: String,
    pub updated_at: String,
}

/// A pull request: an issue's fields plus its branch and merge state. Shares
/// the issue number space, so it lives in `issues/<number>.json` too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequestRecord {
    pub assignees: Vec<String>,
    pub author: String,
    pub base: GitRef,
    pub body: Option<String>,
    pub closed_at: Option<String>,
    pub created_at: String,
    pub draft: bool,
    pub head: GitRef,
    pub html_url: String,
    pub labels: Vec<String>,
    pub locked: bool,
    pub merged: bool,
    pub merged_at: Option<String>,
    pub milestone: Option<Milestone>,
    pub number: u64,
    pub state: String,
    pub state_reason: Option<String>,
    pub title: String,
    pub updated_at: String,
}

/// A comment on an issue or pull request, `comments/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommentRecord {
    pub author: String,
    pub body: String,
    pub created_at: String,
    pub html_url: String,
    pub id: u64,
    /// The issue or pull request it is on.
    pub issue_number: u64,
    pub updated_at: String,
}

/// A release, `releases/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub author: String,
    pub body: Option<String>,
    pub draft: bool,
    pub html_url: String,
    pub id: u64,
    pub name: Option<String>,
    pub prerelease: bool,
    pub published_at: Option<String>,
    /// The git tag (GitHub's `tag_name`).
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    pub number: u64,
    pub title: String,
}

/// A branch tip of a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRef {
    #[serde(rename = "ref")]
    pub name: String,
    pub sha: String,
}

/// The bytes of the record's file: pretty JSON (two-space indent), keys
/// sorted, trailing newline.
pub fn file_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs (strings, numbers, bools, lists) to a
    // Vec cannot fail; an empty file would still hash deterministically.
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// SHA-256 of [`file_bytes`], lowercase hex.
pub fn content_hash<T: Serialize>(value: &T) -> String {
    hex::encode(Sha256::digest(file_bytes(value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn assert_sorted(value: &Value, path: &str) {
        match value {
            Value::Object(map) => {
                let keys: Vec<&String> = map.keys().collect();
                let mut sorted = keys.clone();
                sorted.sort();
                assert_eq!(keys, sorted, "keys of {path} are not sorted");
                for (k, v) in map {
                    assert_sorted(v, &format!("{path}.{k}"));
                }
            }
            Value::Array(items) => items.iter().for_each(|v| assert_sorted(v, path)),
            _ => {}
        }
    }

    /// Checks, on the pretty-printed text itself, that each object's keys
    /// are written in sorted order (serde_json's `Map` sorts on reading unless
    /// `preserve_order` is on, so reading back would prove nothing).
    fn assert_written_sorted(bytes: &[u8]) -> Value {
        let text = std::str::from_utf8(bytes).expect("utf-8");
        let mut open: Vec<Vec<String>> = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('}') {
                open.pop();
            }
            if let Some(rest) = trimmed.strip_prefix('"') {
                if let (Some(end), Some(keys)) = (rest.find("\":"), open.last_mut()) {
                    let key = rest[..end].to_string();
                    assert!(
                        !matches!(keys.last(), Some(last) if *last >= key),
                        "{key:?} written after {:?}",
                        keys.last()
                    );
                    keys.push(key);
                }
            }
            if trimmed.ends_with('{') {
                open.push(Vec::new());
            }
        }
        serde_json::from_slice(bytes).expect("json")
    }

    fn pull_request() -> PullRequestRecord {
        PullRequestRecord {
            assignees: vec!["a".into()],
            author: "octocat".into(),
            base: GitRef { name: "main".into(), sha: "1".into() },
            body: None,
            closed_at: None,
            created_at: "2019-05-15T15:20:33Z".into(),
            draft: false,
            head: GitRef { name: "x".into(), sha: "2".into() },
            html_url: "https://github.com/o/r/pull/2".into(),
            labels: vec![],
            locked: false,
            merged: false,
            merged_at: None,
            milestone: Some(Milestone { number: 1, title: "v1".into() }),
            number: 2,
            state: "open".into(),
            state_reason: None,
            title: "t".into(),
            updated_at: "2019-05-15T15:20:33Z".into(),
        }
    }

    #[test]
    fn keys_are_written_sorted() {
        let records = [
            Record::PullRequest(pull_request()),
            Record::Comment(CommentRecord {
                author: "a".into(),
                body: "b".into(),
                created_at: "c".into(),
                html_url: "h".into(),
                id: 1,
                issue_number: 2,
                updated_at: "u".into(),
            }),
            Record::Release(ReleaseRecord {
                author: "a".into(),
                body: None,
                draft: false,
                html_url: "h".into(),
                id: 1,
                name: None,
                prerelease: false,
                published_at: None,
                tag: "v1".into(),
            }),
        ];
        for record in &records {
            let bytes = file_bytes(record);
            assert!(bytes.ends_with(b"}\n"));
            let value = assert_written_sorted(&bytes);
            assert_sorted(&value, "record");
        }
    }

    #[test]
    fn equal_records_hash_equal_and_any_change_shows() {
        let a = pull_request();
        let mut b = pull_request();
        assert_eq!(content_hash(&a), content_hash(&b));
        b.head.sha = "3".into();
        assert_ne!(content_hash(&a), content_hash(&b));
        assert_eq!(content_hash(&a).len(), 64);
    }
}
