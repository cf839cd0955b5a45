//! Reading untrusted JSON so that every fault names its field.
//!
//! GitHub payloads are large and mostly irrelevant to hookbus; decoding them
//! into full structs would make any unrelated schema drift a dead letter.
//! Instead the normaliser walks a [`serde_json::Value`] with [`Field`],
//! which remembers the path it took (`issue.labels[2].name`), so a missing
//! or mistyped field becomes a [`Malformed`] that says exactly which one.

use serde_json::Value;

/// A field that is missing or has the wrong type. Its text is (part of) a
/// dead letter's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{path}` {problem}")]
pub struct Malformed {
    pub path: String,
    pub problem: String,
}

/// A position in a JSON document: the path taken to it and the value found
/// there, if any.
#[derive(Debug, Clone)]
pub struct Field<'v> {
    path: String,
    /// `None` when the field is absent.
    value: Option<&'v Value>,
}

impl<'v> Field<'v> {
    /// The document itself; its children's paths start at the top.
    pub fn root(value: &'v Value) -> Self {
        Field { path: String::new(), value: Some(value) }
    }

    /// A named child. Absent when this field is absent or null; an error when
    /// this field holds something other than an object.
    pub fn get(&self, name: &str) -> Result<Field<'v>, Malformed> {
        let path = if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) };
        let value = match self.value {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => map.get(name),
            Some(other) => return Err(self.wrong("an object", other)),
        };
        Ok(Field { path, value })
    }

    /// The raw value, `None` when absent.
    pub fn value(&self) -> Option<&'v Value> {
        self.value
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the field is there and not null.
    pub fn is_present(&self) -> bool {
        !matches!(self.value, None | Some(Value::Null))
    }

    pub fn str(&self) -> Result<&'v str, Malformed> {
        self.opt_str()?.ok_or_else(|| self.absent("a string"))
    }

    /// A string, or `None` when absent or null.
    pub fn opt_str(&self) -> Result<Option<&'v str>, Malformed> {
        match self.value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong("a string", other)),
        }
    }

    /// A non-negative integer (GitHub's numbers and ids).
    pub fn u64(&self) -> Result<u64, Malformed> {
        self.opt_u64()?.ok_or_else(|| self.absent("a non-negative integer"))
    }

    pub fn opt_u64(&self) -> Result<Option<u64>, Malformed> {
        match self.value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n) => Ok(Some(n)),
                None => Err(self.problem(format!("must be a non-negative integer, found {n}"))),
            },
            Some(other) => Err(self.wrong("a non-negative integer", other)),
        }
    }

    pub fn bool(&self) -> Result<bool, Malformed> {
        self.opt_bool()?.ok_or_else(|| self.absent("true or false"))
    }

    pub fn opt_bool(&self) -> Result<Option<bool>, Malformed> {
        match self.value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong("true or false", other)),
        }
    }

    /// The items of an array, each with its indexed path; empty when absent
    /// or null.
    pub fn items(&self) -> Result<Vec<Field<'v>>, Malformed> {
        match self.value {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, value)| Field { path: format!("{}[{i}]", self.path), value: Some(value) })
                .collect()),
            Some(other) => Err(self.wrong("an array", other)),
        }
    }

    /// An RFC 3339 timestamp (GitHub writes `2019-05-15T15:20:18Z`), as
    /// milliseconds since the Unix epoch, or `None` when absent or null.
    pub fn opt_timestamp_ms(&self) -> Result<Option<i64>, Malformed> {
        let Some(text) = self.opt_str()? else { return Ok(None) };
        let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|err| self.problem(format!("must be an RFC 3339 timestamp ({err}), found {text:?}")))?;
        i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
            .map(Some)
            .map_err(|_| self.problem(format!("is out of range: {text:?}")))
    }

    /// An error about this field with free text.
    pub fn problem(&self, problem: impl Into<String>) -> Malformed {
        Malformed { path: self.display_path(), problem: problem.into() }
    }

    fn absent(&self, want: &str) -> Malformed {
        match self.value {
            Some(Value::Null) => self.problem(format!("must be {want}, found null")),
            _ => self.problem("is missing"),
        }
    }

    fn wrong(&self, want: &str, found: &Value) -> Malformed {
        self.problem(format!("must be {want}, found {}", describe(found)))
    }

    fn display_path(&self) -> String {
        if self.path.is_empty() {
            "(body)".to_string()
        } else {
            self.path.clone()
        }
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_missing_field_is_named_by_its_full_path() {
        let doc = json!({ "issue": { "labels": [{ "name": "bug" }, {}] } });
        let root = Field::root(&doc);
        let labels = root.get("issue").and_then(|i| i.get("labels")).and_then(|l| l.items()).expect("labels");
        let err = labels[1].get("name").and_then(|n| n.str()).expect_err("second label has no name");
        assert_eq!(err.to_string(), "field `issue.labels[1].name` is missing");
    }

    #[test]
    fn a_mistyped_field_says_what_was_expected_and_found() {
        let doc = json!({ "issue": { "number": "7" }, "sender": "octocat" });
        let root = Field::root(&doc);
        let err = root.get("issue").and_then(|i| i.get("number")).and_then(|n| n.u64()).expect_err("a string");
        assert_eq!(err.to_string(), "field `issue.number` must be a non-negative integer, found a string");
        let err = root.get("sender").and_then(|s| s.get("login")).expect_err("sender is not an object");
        assert_eq!(err.to_string(), "field `sender` must be an object, found a string");
    }

    #[test]
    fn timestamps_become_milliseconds() {
        let doc = json!({ "at": "2019-05-15T15:20:18Z", "bad": "yesterday" });
        let root = Field::root(&doc);
        assert_eq!(root.get("at").and_then(|f| f.opt_timestamp_ms()).expect("parses"), Some(1_557_933_618_000));
        let err = root.get("bad").and_then(|f| f.opt_timestamp_ms()).expect_err("not a timestamp");
        assert!(err.to_string().starts_with("field `bad` must be an RFC 3339 timestamp"), "{err}");
    }
}
