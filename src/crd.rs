//! Renders the CRDs as YAML, for `tether crd` and for the checked-in copies
//! under `crds/` (kept equal by a test).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Errors while rendering CRDs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot render CRD {name} as YAML")]
    Render {
        name: String,
        #[source]
        source: serde_saphyr::SerializeError,
    },
}

/// File name of a CRD under `crds/`: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as a YAML document (without the `---` separator).
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, Error> {
    serde_saphyr::to_string(crd).map_err(|source| Error::Render {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })
}

/// Every CRD as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, Error> {
    let mut out = String::new();
    for crd in crate::api::crds() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

/// The API reference (`docs/reference.md`): every kind and every field
/// with its type and description, from the CRDs — the descriptions are
/// the one source the docs link to instead of restating them.
pub fn reference() -> String {
    let mut out = String::from(
        "# API reference\n\nGenerated from the CRDs by `scripts/generate.sh` (`tether crd --reference`);\n\
         `kubectl explain <kind>.<field>` shows the same text. Do not edit by hand.\n",
    );
    for crd in crate::api::crds() {
        let names = &crd.spec.names;
        for version in &crd.spec.versions {
            let schema = schema_of(version);
            out.push_str(&format!(
                "\n## {} (`{}/{}`)\n\n{}\n\n| field | type | description |\n| --- | --- | --- |\n",
                names.kind,
                crd.spec.group,
                version.name,
                one_line(
                    schema
                        .get("description")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                )
            ));
            for (path, node) in fields(&schema) {
                let type_ = node.get("type").and_then(serde_json::Value::as_str).unwrap_or("object");
                let description = node
                    .get("description")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                out.push_str(&format!("| `{path}` | {type_} | {} |\n", one_line(description)));
            }
        }
    }
    out
}

/// A version's OpenAPI schema as JSON (null when it has none).
fn schema_of(
    version: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion,
) -> serde_json::Value {
    version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default()
}

/// Text on one table line: newlines become spaces, `|` is escaped.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Every field under `spec` and `status`, depth first, with its schema.
fn fields(schema: &serde_json::Value) -> Vec<(String, &serde_json::Value)> {
    fn walk<'a>(path: String, node: &'a serde_json::Value, out: &mut Vec<(String, &'a serde_json::Value)>) {
        out.push((path.clone(), node));
        let children = node
            .get("properties")
            .or_else(|| node.get("items").and_then(|i| i.get("properties")))
            .or_else(|| node.get("additionalProperties").and_then(|v| v.get("properties")))
            .and_then(serde_json::Value::as_object);
        let infix = if node.get("items").is_some() {
            "[]."
        } else if node
            .get("additionalProperties")
            .is_some_and(serde_json::Value::is_object)
        {
            ".*."
        } else {
            "."
        };
        for (name, child) in children.into_iter().flatten() {
            walk(format!("{path}{infix}{name}"), child, out);
        }
    }
    let mut out = Vec::new();
    for top in ["spec", "status"] {
        if let Some(node) = schema.get("properties").and_then(|p| p.get(top)) {
            walk(top.to_owned(), node, &mut out);
        }
    }
    out
}

/// Every field of `schema` (a JSON schema as JSON) without a description,
/// as `path.to.field`; `metadata`, which the API server describes, aside.
pub fn undescribed(schema: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, node: &serde_json::Value, out: &mut Vec<String>) {
        let described = node
            .get("description")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|d| !d.trim().is_empty());
        if !described && !path.is_empty() {
            out.push(path.to_owned());
        }
        if let Some(properties) = node.get("properties").and_then(serde_json::Value::as_object) {
            for (name, child) in properties {
                if path.is_empty() && name == "metadata" || name == "apiVersion" || name == "kind" {
                    continue;
                }
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                walk(&child_path, child, out);
            }
        }
        if let Some(items) = node.get("items") {
            // An array's items share the array's description.
            if let Some(properties) = items.get("properties").and_then(serde_json::Value::as_object) {
                for (name, child) in properties {
                    walk(&format!("{path}[].{name}"), child, out);
                }
            }
        }
        if let Some(properties) = node
            .get("additionalProperties")
            .and_then(|values| values.get("properties"))
            .and_then(serde_json::Value::as_object)
        {
            for (name, child) in properties {
                walk(&format!("{path}.*.{name}"), child, out);
            }
        }
    }
    let mut out = Vec::new();
    walk("", schema, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kubectl explain` is how users read the API: every kind and every
    /// field says what it is, and no kind shows a code generator's text.
    #[test]
    fn kubectl_explain_describes_every_kind_and_every_field() {
        let mut missing = Vec::new();
        for crd in crate::api::crds() {
            let kind = crd.spec.names.kind.clone();
            for version in &crd.spec.versions {
                let schema = schema_of(version);
                let root = schema
                    .get("description")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                assert!(
                    !root.is_empty() && !root.contains("Auto-generated"),
                    "{kind}: the kind's description is {root:?}"
                );
                missing.extend(undescribed(&schema).into_iter().map(|f| format!("{kind}.{f}")));
            }
        }
        assert!(
            missing.is_empty(),
            "fields without a description:\n{}",
            missing.join("\n")
        );
    }

    /// Day two: `lastSyncTime` and `lastProbeTime` said they moved on every
    /// resync and probe; a pass that finds nothing new writes nothing (0
    /// writes per no-op resync), so their descriptions say that instead.
    #[test]
    fn last_sync_and_probe_times_say_a_pass_that_finds_nothing_leaves_them() {
        let reference = reference();
        for field in ["`status.lastSyncTime`", "`status.lastProbeTime`"] {
            let line = reference
                .lines()
                .find(|l| l.starts_with(&format!("| {field} ")))
                .unwrap_or_else(|| panic!("{field} is not in the reference"));
            assert!(line.contains("writes nothing"), "{line}");
            assert!(line.contains("does not move"), "{line}");
        }
    }
}
