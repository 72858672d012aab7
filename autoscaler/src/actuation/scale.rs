//! Reading and patching a workload's `/scale` subresource (Deployment, StatefulSet,
//! LeaderWorkerSet or any kind that has one), through kube's dynamic API: `GET .../scale` for
//! the current counts, a JSON merge patch `{"spec":{"replicas":N}}` to actuate.

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

use crate::controller::reconcile::ScaleState;
use crate::crd::ScaleTargetRef;

/// The API resource of a scale target (plural guessed from the kind, as Kubernetes does for
/// the kinds goodput scales: deployments, statefulsets, leaderworkersets).
pub fn api_resource(target: &ScaleTargetRef) -> ApiResource {
    let (group, version) = match target.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", target.api_version.as_str()),
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &target.kind))
}

fn api(client: &Client, namespace: &str, target: &ScaleTargetRef) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &api_resource(target))
}

/// The target's replica counts.
pub async fn read(
    client: &Client,
    namespace: &str,
    target: &ScaleTargetRef,
) -> Result<ScaleState, kube::Error> {
    let scale = api(client, namespace, target)
        .get_scale(&target.name)
        .await?;
    let spec = scale.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
    let status = scale.status.map_or(0, |s| s.replicas).max(0) as u32;
    Ok(ScaleState { spec, status })
}

/// Sets the target's `spec.replicas`.
pub async fn patch(
    client: &Client,
    namespace: &str,
    target: &ScaleTargetRef,
    replicas: u32,
    field_manager: &str,
) -> Result<(), kube::Error> {
    let body = serde_json::json!({ "spec": { "replicas": replicas } });
    api(client, namespace, target)
        .patch_scale(
            &target.name,
            &PatchParams {
                field_manager: Some(field_manager.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&body),
        )
        .await?;
    Ok(())
}
