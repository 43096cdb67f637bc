//! `synth diff OLD_DIR NEW_DIR`: what deploying a new rendering over an old one would do, per
//! stack, and which of those changes CloudFormation cannot apply, like `cdk diff`.
//!
//! A resource is replaced when a create-only property changes (from CloudFormation's resource
//! schemas, as cfn-lint ships them: `data/create-only.json`, checked against them by a test) or
//! when the provider would give it a new physical ID. CloudFormation cannot replace a resource
//! whose custom name stays the same (it creates the new one first), and a resource that moves
//! between stacks is created in the new stack while the old one still holds its name or, for a
//! budget, its application.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

/// Create-only properties of the resource types synth renders.
const CREATE_ONLY: &str = include_str!("../data/create-only.json");

/// Properties whose change makes the tokenfence provider answer with a new physical ID.
const CUSTOM_REPLACING: &[(&str, &[&str])] = &[
    ("Custom::TokenBudget", &["Application"]),
    ("Custom::TokenAlarm", &["AlarmName"]),
];

/// The create-only properties of each resource type, as data.
pub fn create_only() -> BTreeMap<String, Vec<String>> {
    let mut table: BTreeMap<String, Vec<String>> =
        serde_json::from_str(CREATE_ONLY).expect("data/create-only.json is valid");
    for (kind, props) in CUSTOM_REPLACING {
        table.insert(
            kind.to_string(),
            props.iter().map(|p| p.to_string()).collect(),
        );
    }
    table
}

/// A rendering: stack name -> template, read from a directory of `*.yaml` templates.
pub type Stacks = BTreeMap<String, Value>;

/// Reads every template (`*.yaml` with `Resources`) in `dir`; the stack is the file's stem.
pub fn read_dir(dir: &Path) -> Result<Stacks, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
    let mut stacks = Stacks::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".yaml"))
        else {
            continue;
        };
        if stem.ends_with(".packaged") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let template: Value = serde_yaml_ng::from_str(&text)
            .map_err(|e| format!("`{}` is not a template: {e}", path.display()))?;
        if template.get("Resources").is_some_and(Value::is_object) {
            stacks.insert(stem.to_string(), template);
        }
    }
    Ok(stacks)
}

/// What happens to one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created.
    Added,
    /// Deleted (or, with `DeletionPolicy: Retain`, left in the account).
    Removed {
        /// Retained rather than deleted.
        retained: bool,
    },
    /// Updated in place.
    Modified,
    /// Replaced: these create-only properties change.
    Replaced(Vec<String>),
    /// Deleted from `from` and created in this stack.
    MovedFrom(String),
    /// Created in `to` and deleted from this stack.
    MovedTo(String),
}

/// One resource's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceChange {
    /// Its logical ID.
    pub logical_id: String,
    /// Its type.
    pub kind: String,
    /// What happens.
    pub change: Change,
}

/// The difference between two renderings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Per stack (new, removed and changed stacks only), its resources' changes.
    pub stacks: BTreeMap<String, Vec<ResourceChange>>,
    /// Stacks only in the new rendering.
    pub new_stacks: BTreeSet<String>,
    /// Stacks only in the old rendering.
    pub gone_stacks: BTreeSet<String>,
    /// Changes CloudFormation cannot apply, each with why.
    pub unsafe_changes: Vec<String>,
}

fn resources(template: &Value) -> impl Iterator<Item = (&String, &Value)> {
    template["Resources"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.iter())
}

fn kind(resource: &Value) -> String {
    resource["Type"].as_str().unwrap_or_default().to_string()
}

/// The custom name of `resource`: its set create-only property named `...Name`.
fn custom_name<'a>(resource: &'a Value, create_only: &[String]) -> Option<(&'a str, &'a Value)> {
    let props = resource["Properties"].as_object()?;
    create_only
        .iter()
        .filter(|p| p.ends_with("Name"))
        .find_map(|p| props.get_key_value(p.as_str()))
        .map(|(k, v)| (k.as_str(), v))
}

/// Compares two renderings.
pub fn diff(old: &Stacks, new: &Stacks) -> Diff {
    let table = create_only();
    let none = Vec::new();
    let mut out = Diff::default();
    // Where each logical ID lives, to tell moves from adds and removes.
    let home = |stacks: &Stacks| -> BTreeMap<String, String> {
        stacks
            .iter()
            .flat_map(|(stack, t)| resources(t).map(move |(id, _)| (id.clone(), stack.clone())))
            .collect()
    };
    let (old_home, new_home) = (home(old), home(new));
    out.new_stacks = new
        .keys()
        .filter(|s| !old.contains_key(*s))
        .cloned()
        .collect();
    out.gone_stacks = old
        .keys()
        .filter(|s| !new.contains_key(*s))
        .cloned()
        .collect();
    let empty = Value::Null;
    for stack in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let before = old.get(stack).unwrap_or(&empty);
        let after = new.get(stack).unwrap_or(&empty);
        let mut changes = Vec::new();
        let ids: BTreeSet<&String> = resources(before)
            .chain(resources(after))
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            let (b, a) = (&before["Resources"][id], &after["Resources"][id]);
            let create_only = |r: &Value| table.get(&kind(r)).unwrap_or(&none);
            let change = match (b.is_null(), a.is_null()) {
                (true, false) => match old_home.get(id) {
                    Some(from) if from != stack => {
                        let co = create_only(a);
                        if kind(a).starts_with("Custom::TokenBudget") {
                            out.unsafe_changes.push(format!("`{id}` moves from stack `{from}` to `{stack}`: its application stays owned by the old stack until that stack deletes it, so the provider refuses it in the new one; deploy `{from}` without it first, or keep it in `{from}` (render with `--previous`)"));
                        } else if let Some((prop, name)) = custom_name(a, co) {
                            out.unsafe_changes.push(format!("`{id}` ({}) moves from stack `{from}` to `{stack}` keeping its `{prop}` {name}: the new stack cannot create it while the old one holds the name", kind(a)));
                        } else if old[from]["Resources"][id]["DeletionPolicy"] == "Retain" {
                            out.unsafe_changes.push(format!("`{id}` ({}) moves from stack `{from}` to `{stack}` with `DeletionPolicy: Retain`: the old stack leaves it in the account and the new stack creates an empty one; keep it in `{from}` (render with `--previous`)", kind(a)));
                        }
                        Change::MovedFrom(from.clone())
                    }
                    _ => Change::Added,
                },
                (false, true) => match new_home.get(id) {
                    Some(to) if to != stack => Change::MovedTo(to.clone()),
                    _ => Change::Removed {
                        retained: b["DeletionPolicy"] == "Retain",
                    },
                },
                (false, false) if a == b => continue,
                (false, false) => {
                    let co = if kind(a) == kind(b) {
                        create_only(a).clone()
                    } else {
                        vec!["Type".into()]
                    };
                    let changed: Vec<String> = co
                        .iter()
                        .filter(|p| {
                            *p == "Type"
                                || b["Properties"].get(p.as_str())
                                    != a["Properties"].get(p.as_str())
                        })
                        .cloned()
                        .collect();
                    if changed.is_empty() {
                        Change::Modified
                    } else {
                        if let (Some((prop, old_name)), Some((_, new_name))) =
                            (custom_name(b, &co), custom_name(a, &co))
                            && old_name == new_name
                        {
                            out.unsafe_changes.push(format!(
                                "`{id}` ({}) in stack `{stack}` is replaced ({} changes) but keeps its `{prop}` {new_name}: CloudFormation cannot replace a custom-named resource",
                                kind(a),
                                changed.join(", ")
                            ));
                        }
                        Change::Replaced(changed)
                    }
                }
                (true, true) => continue,
            };
            changes.push(ResourceChange {
                logical_id: id.clone(),
                kind: if a.is_null() { kind(b) } else { kind(a) },
                change,
            });
        }
        if !changes.is_empty() || out.new_stacks.contains(stack) || out.gone_stacks.contains(stack)
        {
            out.stacks.insert(stack.clone(), changes);
        }
    }
    out
}

/// The diff as text, one line per resource.
pub fn render(diff: &Diff) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if diff.stacks.is_empty() {
        s.push_str("no changes\n");
    }
    for (stack, changes) in &diff.stacks {
        let what = if diff.new_stacks.contains(stack) {
            " (new stack)"
        } else if diff.gone_stacks.contains(stack) {
            " (no longer rendered: delete the stack)"
        } else {
            ""
        };
        let _ = writeln!(s, "stack {stack}{what}");
        for c in changes {
            let (sign, detail) = match &c.change {
                Change::Added => ("+", String::new()),
                Change::Removed { retained: false } => ("-", String::new()),
                Change::Removed { retained: true } => {
                    ("-", " (retained: stays in the account)".into())
                }
                Change::Modified => ("~", String::new()),
                Change::Replaced(props) => ("!", format!(" replaced: {}", props.join(", "))),
                Change::MovedFrom(from) => (">", format!(" moved here from {from}")),
                Change::MovedTo(to) => ("<", format!(" moved to {to}")),
            };
            let _ = writeln!(s, "  {sign} {} ({}){detail}", c.logical_id, c.kind);
        }
    }
    for problem in &diff.unsafe_changes {
        let _ = writeln!(s, "cannot apply: {problem}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stacks(entries: &[(&str, Value)]) -> Stacks {
        entries
            .iter()
            .map(|(name, resources)| (name.to_string(), json!({ "Resources": resources })))
            .collect()
    }

    #[test]
    fn a_retained_resource_moved_between_stacks_is_refused_named_or_not() {
        let table = json!({ "Type": "AWS::DynamoDB::Table", "DeletionPolicy": "Retain", "Properties": { "BillingMode": "PAY_PER_REQUEST" } });
        let old = stacks(&[("a", json!({ "Ledger": table })), ("b", json!({}))]);
        let new = stacks(&[("a", json!({})), ("b", json!({ "Ledger": table }))]);
        let moved = diff(&old, &new);
        assert_eq!(moved.unsafe_changes.len(), 1, "{:?}", moved.unsafe_changes);
        assert!(
            moved.unsafe_changes[0].contains("`DeletionPolicy: Retain`"),
            "{:?}",
            moved.unsafe_changes
        );
        // A resource that is not retained moves without loss of anything it holds.
        let queue = json!({ "Type": "AWS::SQS::Queue", "Properties": {} });
        let old = stacks(&[("a", json!({ "Q": queue })), ("b", json!({}))]);
        let new = stacks(&[("a", json!({})), ("b", json!({ "Q": queue }))]);
        assert!(diff(&old, &new).unsafe_changes.is_empty());
    }
}
