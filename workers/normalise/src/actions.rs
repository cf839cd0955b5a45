//! The (event, action) table: what the normaliser does with each GitHub
//! webhook. `docs/pipeline.md` shows the same table to people; the test
//! `every_documented_action_is_decided_as_documented` keeps the two equal.

/// What one (event, action) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A `sync.operation` with this effect on the record.
    Sync(Effect),
    /// Changes the set of synced repositories; no operation.
    Repositories(RepositoryChange),
    /// Acknowledged and counted, nothing emitted.
    Skip(SkipReason),
}

/// What an operation does to the record's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Write the record (create or replace the file).
    Upsert,
    /// The resource is gone from this repository: remove the file.
    Remove,
}

/// How an installation event changes the synced repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryChange {
    /// Enable `repositories` (installation created) or `repositories_added`.
    Enable,
    /// Disable `repositories` (installation deleted) or `repositories_removed`.
    Disable,
    /// `installation_repositories`: enable the added, disable the removed.
    AddRemove,
}

/// Why an event was acknowledged without an operation. The name is the
/// `reason` label of `hookbus_normalise_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// An event hookbus does not sync (`push`, `star`, `ping`, ...).
    EventNotSynced,
    /// The action changes nothing a record holds (pins, issue types, review
    /// requests, auto-merge, merge queue).
    OutsideRecord,
    /// An installation action that does not change which repositories are
    /// synced (new permissions, suspend, unsuspend).
    RepositoriesUnchanged,
    /// An action not in the table (GitHub added one): logged as a warning so
    /// the table gets a row.
    UnknownAction,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::EventNotSynced => "event_not_synced",
            SkipReason::OutsideRecord => "outside_record",
            SkipReason::RepositoriesUnchanged => "repositories_unchanged",
            SkipReason::UnknownAction => "unknown_action",
        }
    }
}

/// The events whose resources become records.
pub const SYNCED_EVENTS: [&str; 4] = ["issues", "issue_comment", "pull_request", "release"];

/// Decides an (event, action). `action` is the body's `action` field.
pub fn decide(event: &str, action: &str) -> Decision {
    use Decision::{Repositories, Skip, Sync};
    use Effect::{Remove, Upsert};
    match (event, action) {
        (
            "issues",
            "opened" | "edited" | "closed" | "reopened" | "assigned" | "unassigned" | "labeled" | "unlabeled"
            | "milestoned" | "demilestoned" | "locked" | "unlocked",
        ) => Sync(Upsert),
        // A transferred issue leaves this repository; the destination gets
        // its own `issues.opened`.
        ("issues", "deleted" | "transferred") => Sync(Remove),
        ("issues", "pinned" | "unpinned" | "typed" | "untyped") => Skip(SkipReason::OutsideRecord),

        ("issue_comment", "created" | "edited") => Sync(Upsert),
        ("issue_comment", "deleted") => Sync(Remove),

        (
            "pull_request",
            "opened" | "edited" | "closed" | "reopened" | "assigned" | "unassigned" | "labeled" | "unlabeled"
            | "milestoned" | "demilestoned" | "locked" | "unlocked" | "synchronize" | "ready_for_review"
            | "converted_to_draft",
        ) => Sync(Upsert),
        (
            "pull_request",
            "review_requested"
            | "review_request_removed"
            | "auto_merge_enabled"
            | "auto_merge_disabled"
            | "enqueued"
            | "dequeued"
            | "queued",
        ) => Skip(SkipReason::OutsideRecord),

        ("release", "created" | "edited" | "published" | "unpublished" | "prereleased" | "released") => Sync(Upsert),
        ("release", "deleted") => Sync(Remove),

        ("installation", "created") => Repositories(RepositoryChange::Enable),
        ("installation", "deleted") => Repositories(RepositoryChange::Disable),
        ("installation", "new_permissions_accepted" | "suspend" | "unsuspend") => {
            Skip(SkipReason::RepositoriesUnchanged)
        }
        ("installation_repositories", "added" | "removed") => Repositories(RepositoryChange::AddRemove),

        (event, _) if SYNCED_EVENTS.contains(&event) => Skip(SkipReason::UnknownAction),
        ("installation" | "installation_repositories", _) => Skip(SkipReason::UnknownAction),
        _ => Skip(SkipReason::EventNotSynced),
    }
}

/// Whether the event's body must be read at all.
pub fn is_handled_event(event: &str) -> bool {
    SYNCED_EVENTS.contains(&event) || event == "installation" || event == "installation_repositories"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the rows `| event | action | decision |` of docs/pipeline.md.
    fn documented_rows() -> Vec<(String, String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/pipeline.md");
        let text = std::fs::read_to_string(path).expect("docs/pipeline.md");
        let section = text
            .split("<!-- decision-table:start -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- decision-table:end -->").next())
            .expect("docs/pipeline.md has the decision table markers");
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|line| {
                let cells: Vec<String> =
                    line.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`').to_string()).collect();
                (cells[0].clone(), cells[1].clone(), cells[2].clone())
            })
            .collect()
    }

    fn describe(decision: Decision) -> String {
        match decision {
            Decision::Sync(Effect::Upsert) => "sync (upsert)".into(),
            Decision::Sync(Effect::Remove) => "sync (remove)".into(),
            Decision::Repositories(RepositoryChange::Enable) => "enable repositories".into(),
            Decision::Repositories(RepositoryChange::Disable) => "disable repositories".into(),
            Decision::Repositories(RepositoryChange::AddRemove) => "enable added, disable removed".into(),
            Decision::Skip(reason) => format!("skip: {}", reason.as_str()),
        }
    }

    #[test]
    fn every_documented_action_is_decided_as_documented() {
        let rows = documented_rows();
        assert!(rows.len() > 50, "the table has {} rows", rows.len());
        for (event, action, documented) in rows {
            assert_eq!(describe(decide(&event, &action)), documented, "{event}.{action}");
        }
    }

    #[test]
    fn record_changing_actions_sync() {
        for action in [
            "edited",
            "closed",
            "reopened",
            "labeled",
            "unlabeled",
            "assigned",
            "unassigned",
            "milestoned",
            "demilestoned",
            "locked",
            "unlocked",
        ] {
            assert!(matches!(decide("issues", action), Decision::Sync(_)), "issues.{action}");
            assert!(matches!(decide("pull_request", action), Decision::Sync(_)), "pull_request.{action}");
        }
        for action in ["synchronize", "ready_for_review", "converted_to_draft"] {
            assert_eq!(decide("pull_request", action), Decision::Sync(Effect::Upsert));
        }
        for action in ["published", "unpublished", "edited", "created"] {
            assert_eq!(decide("release", action), Decision::Sync(Effect::Upsert));
        }
        assert_eq!(decide("issues", "transferred"), Decision::Sync(Effect::Remove));
        assert_eq!(decide("issues", "deleted"), Decision::Sync(Effect::Remove));
    }

    #[test]
    fn unknown_actions_and_events_are_skipped_with_their_own_reasons() {
        assert_eq!(decide("issues", "levitated"), Decision::Skip(SkipReason::UnknownAction));
        assert_eq!(decide("push", ""), Decision::Skip(SkipReason::EventNotSynced));
        assert_eq!(decide("ping", ""), Decision::Skip(SkipReason::EventNotSynced));
    }
}
