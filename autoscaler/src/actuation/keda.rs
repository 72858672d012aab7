//! KEDA's external scaler (`externalscaler.ExternalScaler`, proto in `proto/`), answering from
//! the controller's desired counts with the pass-through pattern: one metric per ScaledObject
//! with target 1, whose value is the desired replica count, so that KEDA's HPA (AverageValue)
//! computes `ceil(desired / 1) = desired`.
//!
//! A ScaledObject's `external` trigger names what it scales in its metadata (forwarded by KEDA
//! as `scalerMetadata`): `modelAutoscaler` (the ModelAutoscaler's name) and `variant`; the
//! namespace is the ScaledObject's own unless `namespace` is given. IsActive is true while the
//! desired count is above zero (KEDA then scales 0 -> 1 and hands over to its HPA);
//! StreamIsActive pushes a new answer whenever it changes.

use std::pin::Pin;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::store::{DesiredKey, DesiredStore};

/// The generated protocol types and services.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("externalscaler");
}

use proto::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};

/// The metric name goodput's scaler reports (KEDA's HPA sees it as `s<i>-goodput-desired-replicas`).
pub const METRIC_NAME: &str = "goodput-desired-replicas";

/// The scaler service.
#[derive(Clone)]
pub struct KedaScaler {
    store: DesiredStore,
}

impl KedaScaler {
    pub fn new(store: DesiredStore) -> Self {
        Self { store }
    }

    /// A tonic service to add to a `Server`.
    pub fn into_service(self) -> ExternalScalerServer<Self> {
        ExternalScalerServer::new(self)
    }

    fn key(r: &ScaledObjectRef) -> Result<DesiredKey, Status> {
        let meta = &r.scaler_metadata;
        let get = |k: &str| meta.get(k).filter(|v| !v.is_empty()).cloned();
        let autoscaler = get("modelAutoscaler").ok_or_else(|| {
            Status::invalid_argument(format!(
                "ScaledObject {}/{}: trigger metadata needs `modelAutoscaler` (the ModelAutoscaler's name)",
                r.namespace, r.name
            ))
        })?;
        let variant = get("variant").ok_or_else(|| {
            Status::invalid_argument(format!(
                "ScaledObject {}/{}: trigger metadata needs `variant`",
                r.namespace, r.name
            ))
        })?;
        Ok(DesiredKey {
            namespace: get("namespace").unwrap_or_else(|| r.namespace.clone()),
            autoscaler,
            variant,
        })
    }

    fn desired(&self, r: &ScaledObjectRef) -> Result<u32, Status> {
        let key = Self::key(r)?;
        self.store.get(&key).ok_or_else(|| {
            Status::not_found(format!(
                "no decision yet for variant `{}` of ModelAutoscaler {}/{} (is its actuation `keda`?)",
                key.variant, key.namespace, key.autoscaler
            ))
        })
    }
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for KedaScaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let d = self.desired(request.get_ref())?;
        Ok(Response::new(IsActiveResponse { result: d > 0 }))
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let r = request.into_inner();
        let key = Self::key(&r)?;
        let store = self.store.clone();
        let mut changed = store.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<bool> = None;
            loop {
                let active = store.get(&key).is_some_and(|d| d > 0);
                if last != Some(active) {
                    last = Some(active);
                    if tx
                        .send(Ok(IsActiveResponse { result: active }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                tokio::select! {
                    c = changed.changed() => if c.is_err() { break },
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        Self::key(request.get_ref())?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: METRIC_NAME.into(),
                // Both fields: older KEDA reads the integer, newer the float.
                target_size: 1,
                target_size_float: 1.0,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let req = request.into_inner();
        let r = req
            .scaled_object_ref
            .ok_or_else(|| Status::invalid_argument("GetMetricsRequest without scaledObjectRef"))?;
        let d = self.desired(&r)?;
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: if req.metric_name.is_empty() {
                    METRIC_NAME.into()
                } else {
                    req.metric_name
                },
                metric_value: i64::from(d),
                metric_value_float: f64::from(d),
            }],
        }))
    }
}
