//! Outbound: a client change (`POST /api/v1/changes`, docs/api.md) becomes a
//! [`SyncOperationPayload`] whose `updated_at` is when hookbus accepted it.
//!
//! The gateway already validated the change; it is read again here with the
//! same care as a webhook, because anyone may `LPUSH` onto `normalise`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::actions::Effect;
use crate::field::{Field, Malformed};
use crate::record;
use crate::wire::{Actor, ChangePayload, Direction, ResourceKind, SyncOperationPayload, TimeSource};

/// Why a client change could not be normalised; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client.change: {0}")]
pub struct ChangeError(pub Malformed);

impl From<Malformed> for ChangeError {
    fn from(fault: Malformed) -> Self {
        ChangeError(fault)
    }
}

/// Client field names that differ from the record's.
const RENAMED: [(&str, &str); 1] = [("tag_name", "tag")];

/// Normalises one client change.
pub fn normalise(payload: &ChangePayload) -> Result<SyncOperationPayload, ChangeError> {
    let wrapper = Value::Object(serde_json::Map::from_iter([("change".to_string(), payload.change.clone())]));
    let root = Field::root(&wrapper);
    let change = root.get("change")?;
    if !matches!(payload.change, Value::Object(_)) {
        return Err(change.problem("must be an object").into());
    }
    let repository_field = change.get("repository")?;
    let repository = repository_field.str()?;
    let valid_part = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let repository = match repository.split_once('/') {
        Some((owner, name)) if valid_part(owner) && valid_part(name) => repository.to_lowercase(),
        _ => return Err(repository_field.problem("must be \"owner/name\"").into()),
    };
    let resource_field = change.get("resource")?;
    let kind = match resource_field.str()? {
        "issue" => ResourceKind::Issue,
        "comment" => ResourceKind::Comment,
        "release" => ResourceKind::Release,
        _ => return Err(resource_field.problem("must be one of issue, comment, release").into()),
    };
    let action_field = change.get("action")?;
    let action = action_field.str()?;
    let effect = match action {
        "create" | "update" => Effect::Upsert,
        "delete" => Effect::Remove,
        _ => return Err(action_field.problem("must be one of create, update, delete").into()),
    };
    let number = change.get("number")?.opt_u64()?;
    let id = change.get("id")?.opt_u64()?;
    let operation = &payload.operation;
    let key = match (kind, number, id) {
        (ResourceKind::Issue, Some(number), _) => format!("github:{repository}:issue:{number}"),
        (ResourceKind::Comment, _, Some(id)) => format!("github:{repository}:comment:{id}"),
        (ResourceKind::Release, _, Some(id)) => format!("github:{repository}:release:{id}"),
        // Not on GitHub yet: a provisional key of its own (docs/pipeline.md).
        (_, _, _) if action == "create" => {
            let resource = match kind {
                ResourceKind::Comment => "comment",
                ResourceKind::Release => "release",
                _ => "issue",
            };
            format!("github:{repository}:{resource}:new-{operation}")
        }
        (ResourceKind::Issue | ResourceKind::PullRequest, None, _) => {
            return Err(change.get("number")?.problem("is missing").into())
        }
        _ => return Err(change.get("id")?.problem("is missing").into()),
    };
    let changes = changes(&change.get("fields")?)?;
    let actor_field = change.get("actor")?;
    let actor = Actor {
        login: actor_field.get("login")?.str()?.to_string(),
        id: None,
        name: actor_field.get("name")?.opt_str()?.map(str::to_owned),
        email: actor_field.get("email")?.opt_str()?.map(str::to_owned),
    };
    Ok(SyncOperationPayload {
        operation: operation.clone(),
        direction: Direction::Outbound,
        key,
        repository,
        repository_enabled: true,
        kind,
        action: action.to_string(),
        effect,
        updated_at: payload.received_at,
        updated_at_source: TimeSource::Accepted,
        actor,
        delivery: None,
        source: crate::wire::CHANGE_KIND.to_string(),
        number,
        id,
        content_hash: record::content_hash(&changes),
        changes: Some(changes),
        record: None,
        received_at: payload.received_at,
    })
}

/// The changed fields under the record's names, lists sorted, so equal
/// changes hash equal.
fn changes(fields: &Field<'_>) -> Result<BTreeMap<String, Value>, Malformed> {
    let mut out = BTreeMap::new();
    let map = match fields.value() {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(fields.problem("must be an object")),
    };
    for (name, value) in map {
        let field = fields.get(name)?;
        let value = match value {
            Value::Array(_) => {
                let mut texts =
                    field.items()?.iter().map(|item| item.str().map(str::to_owned)).collect::<Result<Vec<_>, _>>()?;
                texts.sort();
                texts.dedup();
                Value::from(texts)
            }
            Value::Object(_) => return Err(field.problem("must not be an object")),
            other => other.clone(),
        };
        let renamed = RENAMED.iter().find(|(from, _)| from == name).map_or(name.as_str(), |(_, to)| to);
        out.insert(renamed.to_string(), value);
    }
    Ok(out)
}
