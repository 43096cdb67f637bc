//! A CloudFormation template: typed at the top, JSON values for properties.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

/// CloudFormation's documented quotas that rendering must respect.
pub mod quotas {
    /// Resources per stack.
    pub const MAX_RESOURCES: usize = 500;
    /// Outputs per stack.
    pub const MAX_OUTPUTS: usize = 200;
    /// Template body size when uploaded to S3 (what `aws cloudformation package` does), in bytes.
    pub const MAX_TEMPLATE_BYTES: usize = 1_000_000;
}

/// A whole template. Maps are ordered by logical ID, so output is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Template {
    /// Always `2010-09-09`.
    #[serde(rename = "AWSTemplateFormatVersion")]
    pub format_version: &'static str,
    /// What the stack is.
    #[serde(rename = "Description")]
    pub description: String,
    /// Resources by logical ID.
    #[serde(rename = "Resources")]
    pub resources: BTreeMap<String, Resource>,
    /// Outputs by logical ID.
    #[serde(rename = "Outputs", skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Output>,
}

/// One resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    /// `AWS::...` or `Custom::...`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Explicit ordering beyond references.
    #[serde(rename = "DependsOn", skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// `Retain` for state that must outlive the stack.
    #[serde(rename = "DeletionPolicy", skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<&'static str>,
    /// `Retain` likewise for replacements.
    #[serde(
        rename = "UpdateReplacePolicy",
        skip_serializing_if = "Option::is_none"
    )]
    pub update_replace_policy: Option<&'static str>,
    /// Properties.
    #[serde(rename = "Properties")]
    pub properties: Value,
}

impl Resource {
    /// A resource of `kind` with `properties`.
    pub fn new(kind: &str, properties: Value) -> Self {
        Resource {
            kind: kind.to_string(),
            depends_on: Vec::new(),
            deletion_policy: None,
            update_replace_policy: None,
            properties,
        }
    }

    /// Adds explicit dependencies.
    pub fn depends_on(mut self, ids: impl IntoIterator<Item = String>) -> Self {
        self.depends_on.extend(ids);
        self
    }

    /// Keeps the resource when the stack is deleted or the resource replaced.
    pub fn retain(mut self) -> Self {
        self.deletion_policy = Some("Retain");
        self.update_replace_policy = Some("Retain");
        self
    }
}

/// One output, optionally exported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    /// What it is.
    #[serde(rename = "Description")]
    pub description: String,
    /// Its value.
    #[serde(rename = "Value")]
    pub value: Value,
    /// Export, for other stacks to import.
    #[serde(rename = "Export", skip_serializing_if = "Option::is_none")]
    pub export: Option<Value>,
}

impl Template {
    /// An empty template.
    pub fn new(description: impl Into<String>) -> Self {
        Template {
            format_version: "2010-09-09",
            description: description.into(),
            ..Default::default()
        }
    }

    /// Adds a resource; logical IDs are unique by construction, so a clash is a bug.
    pub fn add(&mut self, id: impl Into<String>, resource: Resource) {
        let id = id.into();
        let previous = self.resources.insert(id.clone(), resource);
        assert!(previous.is_none(), "logical ID `{id}` rendered twice");
    }

    /// Adds an output, exported under `export` when given.
    pub fn output(
        &mut self,
        id: impl Into<String>,
        description: impl Into<String>,
        value: Value,
        export: Option<String>,
    ) {
        self.outputs.insert(
            id.into(),
            Output {
                description: description.into(),
                value,
                export: export.map(|name| json!({ "Name": name })),
            },
        );
    }

    /// The template as YAML, keys in the order CloudFormation documents them (see
    /// [`crate::yaml`] for why not serde_yaml_ng).
    pub fn to_yaml(&self) -> String {
        use crate::yaml::{entry, key, str_entry};
        let mut out = String::with_capacity(1024 + self.resources.len() * 768);
        str_entry(&mut out, "AWSTemplateFormatVersion", self.format_version, 0);
        str_entry(&mut out, "Description", &self.description, 0);
        key(&mut out, "Resources", 0);
        for (id, resource) in &self.resources {
            key(&mut out, id, 2);
            str_entry(&mut out, "Type", &resource.kind, 4);
            if !resource.depends_on.is_empty() {
                let ids: Vec<Value> = resource.depends_on.iter().map(|d| json!(d)).collect();
                entry(&mut out, "DependsOn", &Value::Array(ids), 4);
            }
            if let Some(policy) = resource.deletion_policy {
                str_entry(&mut out, "DeletionPolicy", policy, 4);
            }
            if let Some(policy) = resource.update_replace_policy {
                str_entry(&mut out, "UpdateReplacePolicy", policy, 4);
            }
            entry(&mut out, "Properties", &resource.properties, 4);
        }
        if !self.outputs.is_empty() {
            key(&mut out, "Outputs", 0);
            for (id, output) in &self.outputs {
                key(&mut out, id, 2);
                str_entry(&mut out, "Description", &output.description, 4);
                entry(&mut out, "Value", &output.value, 4);
                if let Some(export) = &output.export {
                    entry(&mut out, "Export", export, 4);
                }
            }
        }
        out
    }
}

/// `{"Ref": id}`.
pub fn r(id: &str) -> Value {
    json!({ "Ref": id })
}

/// `{"Fn::GetAtt": [id, attr]}`.
pub fn get_att(id: &str, attr: &str) -> Value {
    json!({ "Fn::GetAtt": [id, attr] })
}

/// `{"Fn::Sub": text}`.
pub fn sub(text: &str) -> Value {
    json!({ "Fn::Sub": text })
}

/// `{"Fn::ImportValue": name}`.
pub fn import(name: &str) -> Value {
    json!({ "Fn::ImportValue": name })
}

/// Stable hashes for logical IDs derived from free text, shared with the spec's names.
pub use spec::names::{StableHasher, stable_hash};
