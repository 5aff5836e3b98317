//! Secrets of an ExternalResource, through the API server: the Secret it
//! owns, which receives the secret fields of the target's answers
//! ([`write`]; [`remove`] on deletion), and the Secret values named by
//! `spec.secretProperties`, read when a request is sent ([`read_properties`]).
//! Values are never logged, evented or put in status; messages name
//! Secrets and keys only.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::Value;

use crate::adapter::SecretValues;
use crate::api::ExternalResource;
use crate::controller::{Awaits, Context, FIELD_MANAGER, Failure};

/// The Secret that receives the answer's secret fields.
pub fn secret_name(er: &ExternalResource) -> String {
    er.spec
        .write_secret_ref
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_else(|| format!("{}-secrets", er.name_any()))
}

/// Whether `name` is one Tether may create for `er`: `<er-name>-…`.
pub fn name_is_derived(er: &ExternalResource, name: &str) -> bool {
    name.strip_prefix(&er.name_any())
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('-'))
}

fn owner_reference(er: &ExternalResource) -> Option<OwnerReference> {
    let mut owner = er.controller_owner_ref(&())?;
    // blockOwnerDeletion would need delete rights on the owner's
    // finalizers; the finalizer deletes the Secret itself anyway.
    owner.block_owner_deletion = None;
    Some(owner)
}

fn owned_by(secret: &Secret, er: &ExternalResource) -> bool {
    let uid = er.uid();
    secret.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref())
}

fn api_error(name: &str, e: &kube::Error) -> Failure {
    // The error of the API server names the Secret, never its data.
    Failure::missing("SecretWriteFailed", format!("writing Secret {name}: {e}"))
}

/// Merges `values` into the Secret `er` owns: creates it (owned by `er`),
/// or updates the keys that changed. A Secret of that name that `er` does
/// not own is never touched.
pub async fn write(ctx: &Context, er: &ExternalResource, values: &SecretValues) -> Result<(), Failure> {
    if values.is_empty() {
        return Ok(());
    }
    let namespace = er.namespace().unwrap_or_default();
    let name = secret_name(er);
    // Tether creates Secrets with its own rights: only under names derived
    // from the resource's, so a tenant cannot squat a name the platform
    // will use (a TargetSystem's credentials) through Tether.
    if !name_is_derived(er, &name) {
        return Err(Failure::permanent(
            "SecretNameRefused",
            format!(
                "writeSecretRef {name:?} must start with the ExternalResource's name and a dash ({}-…)",
                er.name_any()
            ),
        ));
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let data: BTreeMap<String, ByteString> = values
        .0
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
        .collect();
    match api.get_opt(&name).await.map_err(|e| api_error(&name, &e))? {
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace),
                    owner_references: owner_reference(er).map(|o| vec![o]),
                    labels: Some([("app.kubernetes.io/managed-by".to_owned(), "tether".to_owned())].into()),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                type_: Some("Opaque".into()),
                ..Secret::default()
            };
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            api.create(&params, &secret).await.map_err(|e| api_error(&name, &e))?;
            Ok(())
        }
        Some(existing) if !owned_by(&existing, er) => Err(Failure::permanent(
            "SecretConflict",
            format!(
                "Secret {name} exists and is not owned by this ExternalResource; \
                 set spec.writeSecretRef to another name or delete that Secret"
            ),
        )),
        Some(existing) => {
            let current = existing.data.unwrap_or_default();
            if data.iter().all(|(k, v)| current.get(k) == Some(v)) {
                return Ok(());
            }
            let patch = serde_json::json!({ "data": data });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            api.patch(&name, &params, &Patch::Merge(&patch))
                .await
                .map_err(|e| api_error(&name, &e))?;
            Ok(())
        }
    }
}

/// Deletes the Secret `er` owns, if there is one (the garbage collector
/// would, through the ownerReference; this does not wait for it, and works
/// where none runs).
pub async fn remove(ctx: &Context, er: &ExternalResource) -> Result<(), Failure> {
    let name = secret_name(er);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &er.namespace().unwrap_or_default());
    match api.get_opt(&name).await.map_err(|e| api_error(&name, &e))? {
        Some(secret) if owned_by(&secret, er) => {
            api.delete(&name, &Default::default())
                .await
                .map(|_| ())
                .or_else(|e| match e {
                    kube::Error::Api(s) if s.code == 404 => Ok(()),
                    other => Err(api_error(&name, &other)),
                })
        }
        _ => Ok(()),
    }
}

/// The values of `spec.secretProperties`, read from their Secrets now.
pub async fn read_properties(ctx: &Context, er: &ExternalResource) -> Result<serde_json::Map<String, Value>, Failure> {
    let mut values = serde_json::Map::new();
    if er.spec.secret_properties.is_empty() {
        return Ok(values);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &er.namespace().unwrap_or_default());
    for (property, source) in &er.spec.secret_properties {
        let r = &source.secret_key_ref;
        let missing = || Failure {
            awaits: Awaits::Secret,
            ..Failure::missing(
                "SecretNotFound",
                format!(
                    "spec.secretProperties.{property}: Secret {} has no key {:?} (yet)",
                    r.name, r.key
                ),
            )
        };
        let secret = api
            .get_opt(&r.name)
            .await
            .map_err(|e| Failure::missing("SecretNotFound", format!("reading Secret {}: {e}", r.name)))?
            .ok_or_else(missing)?;
        let bytes = secret.data.and_then(|d| d.get(&r.key).cloned()).ok_or_else(missing)?;
        let text = String::from_utf8(bytes.0).map_err(|_| {
            Failure::permanent(
                "SecretInvalid",
                format!(
                    "spec.secretProperties.{property}: key {:?} of Secret {} is not UTF-8",
                    r.key, r.name
                ),
            )
        })?;
        values.insert(property.clone(), Value::String(text));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::external_resource::ExternalResourceSpec;

    fn resource(name: &str) -> ExternalResource {
        let spec: ExternalResourceSpec = serde_json::from_value(serde_json::json!({
            "targetRef": {"name": "crm"}, "type": "contact", "properties": {}
        }))
        .expect("a spec");
        ExternalResource::new(name, spec)
    }

    #[test]
    fn threat_tether_writes_only_secrets_named_after_their_resource() {
        let er = resource("api-key");
        assert!(name_is_derived(&er, "api-key-secrets"));
        assert!(name_is_derived(&er, &secret_name(&er)));
        for squatted in ["target-token", "api-key", "api-key-", "api-keys", "default-token-x"] {
            assert!(!name_is_derived(&er, squatted), "{squatted}");
        }
    }
}
