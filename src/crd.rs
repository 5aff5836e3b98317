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
                let schema = version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .map(|s| serde_json::to_value(s).unwrap_or_default())
                    .unwrap_or_default();
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
}
