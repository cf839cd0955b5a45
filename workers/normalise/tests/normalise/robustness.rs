//! Property tests: whatever arrives, the handler answers Ok or a permanent
//! error (a dead letter with a reason) and never panics.

use hookbus_bus::{Envelope, HandlerError};
use proptest::prelude::*;
use serde_json::Value;

use crate::support::*;

/// Every real payload of the synced and installation events.
fn corpus() -> Vec<(&'static str, Value)> {
    let mut all = Vec::new();
    for event in ["issues", "issue_comment", "pull_request", "release", "installation", "installation_repositories"] {
        for (_, bytes) in fixtures(event) {
            all.push((event, serde_json::from_slice(&bytes).expect("json")));
        }
    }
    all
}

/// JSON-pointer paths of every value in `value`, shallow ones first.
fn paths(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(path.clone());
                paths(v, path, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let path = format!("{prefix}/{i}");
                out.push(path.clone());
                paths(v, path, out);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove,
    Replace(Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::Remove),
        Just(Mutation::Replace(Value::Null)),
        any::<bool>().prop_map(|b| Mutation::Replace(Value::from(b))),
        any::<i64>().prop_map(|n| Mutation::Replace(Value::from(n))),
        any::<f64>()
            .prop_map(|n| Mutation::Replace(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))),
        ".{0,12}".prop_map(|s| Mutation::Replace(Value::from(s))),
        Just(Mutation::Replace(Value::Array(vec![]))),
        Just(Mutation::Replace(serde_json::json!({ "x": 1 }))),
    ]
}

fn apply(value: &mut Value, path: &str, mutation: &Mutation) {
    let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
    let last = last.replace("~1", "/").replace("~0", "~");
    let Some(parent) = value.pointer_mut(parent) else { return };
    match (parent, mutation) {
        (Value::Object(map), Mutation::Remove) => {
            map.remove(&last);
        }
        (Value::Object(map), Mutation::Replace(new)) => {
            map.insert(last, new.clone());
        }
        (Value::Array(items), m) => {
            if let Ok(i) = last.parse::<usize>() {
                if i < items.len() {
                    match m {
                        Mutation::Remove => {
                            items.remove(i);
                        }
                        Mutation::Replace(new) => items[i] = new.clone(),
                    }
                }
            }
        }
        _ => {}
    }
}

fn settles_cleanly(result: Result<Vec<hookbus_normalise::SyncOperationPayload>, HandlerError>) -> Result<(), String> {
    match result {
        Ok(_) | Err(HandlerError::Permanent(_)) => Ok(()),
        Err(other) => Err(format!("neither Ok nor a dead letter: {other:?}")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_as_a_webhook_body_never_panic(
        event in prop::sample::select(vec!["issues", "issue_comment", "pull_request", "release", "installation",
            "installation_repositories", "push"]),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let (plugin, _) = plugin();
        let result = runtime().block_on(handle(&plugin, &webhook(event, "d", &body)));
        settles_cleanly(result).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn random_bytes_as_a_message_payload_never_panic(
        kind in prop::sample::select(vec!["github.webhook", "client.change", "other"]),
        payload in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let (plugin, _) = plugin();
        let message = Envelope::new(kind, payload.into());
        let result = runtime().block_on(handle(&plugin, &message));
        settles_cleanly(result).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn mutated_real_payloads_never_panic() {
    let corpus = corpus();
    let rt = runtime();
    let (plugin, _) = plugin();
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 2_000, ..ProptestConfig::default() });
    let strategy = (0..corpus.len(), any::<prop::sample::Index>(), prop::collection::vec(mutation(), 1..4));
    let outcome = runner.run(&strategy, |(which, at, mutations)| {
        let (event, original) = &corpus[which];
        let mut body = original.clone();
        let mut all = Vec::new();
        paths(&body, String::new(), &mut all);
        // Bias towards the fields normalise reads: shallow paths first.
        all.sort_by_key(|p| p.matches('/').count());
        let shallow = &all[..all.len().min(400)];
        for (n, mutation) in mutations.iter().enumerate() {
            let path = &shallow[(at.index(shallow.len()) + n * 7) % shallow.len()];
            apply(&mut body, path, mutation);
        }
        let bytes = serde_json::to_vec(&body).expect("json");
        settles_cleanly(rt.block_on(handle(&plugin, &webhook(event, "d", &bytes)))).map_err(TestCaseError::fail)
    });
    if let Err(err) = outcome {
        panic!("{err}");
    }
}
