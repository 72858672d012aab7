//! The edge between goodput and Prometheus: one instant query in, labelled samples out.
//!
//! [`PromQuery`] is what the collector needs; [`PromHttp`] implements it over Prometheus' HTTP
//! API with `prometheus-http-query`, with a request timeout so that a slow Prometheus cannot hold
//! a decision. Every failure becomes a [`MetricsError`] that says which query failed and why.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use prometheus_http_query::response::Data;

/// One series of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// Evaluation timestamp, unix seconds.
    pub timestamp: f64,
}

/// Why a query produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("invalid Prometheus URL `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("Prometheus unreachable or failed for `{query}`: {message}")]
    Unavailable { query: String, message: String },
    #[error("Prometheus rejected `{query}`: {message}")]
    Rejected { query: String, message: String },
    #[error("Prometheus answered `{query}` with a {kind}, expected an instant vector")]
    UnexpectedResult { query: String, kind: &'static str },
    #[error(transparent)]
    Scope(#[from] crate::metrics::queries::ScopeError),
}

/// Runs instant queries.
pub trait PromQuery {
    /// Evaluates `query` now and returns its instant vector.
    fn instant(
        &self,
        query: &str,
    ) -> impl Future<Output = Result<Vec<Series>, MetricsError>> + Send;
}

/// Prometheus over HTTP.
#[derive(Clone)]
pub struct PromHttp {
    client: prometheus_http_query::Client,
    url: String,
}

impl std::fmt::Debug for PromHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromHttp").field("url", &self.url).finish()
    }
}

impl PromHttp {
    /// A client for the Prometheus at `url` whose requests give up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, MetricsError> {
        let http = prometheus_http_query::reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| MetricsError::Url {
                url: url.into(),
                message: e.to_string(),
            })?;
        let client =
            prometheus_http_query::Client::from(http, url).map_err(|e| MetricsError::Url {
                url: url.into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            client,
            url: url.to_string(),
        })
    }
}

impl PromQuery for PromHttp {
    async fn instant(&self, query: &str) -> Result<Vec<Series>, MetricsError> {
        let result = self.client.query(query).get().await.map_err(|e| match e {
            prometheus_http_query::Error::Prometheus(p) => MetricsError::Rejected {
                query: query.into(),
                message: p.to_string(),
            },
            other => MetricsError::Unavailable {
                query: query.into(),
                message: other.to_string(),
            },
        })?;
        match result.into_inner().0 {
            Data::Vector(v) => Ok(v
                .into_iter()
                .map(|iv| {
                    let (labels, sample) = iv.into_inner();
                    Series {
                        labels: labels.into_iter().collect(),
                        value: sample.value(),
                        timestamp: sample.timestamp(),
                    }
                })
                .collect()),
            Data::Matrix(_) => Err(MetricsError::UnexpectedResult {
                query: query.into(),
                kind: "range vector",
            }),
            Data::Scalar(_) => Err(MetricsError::UnexpectedResult {
                query: query.into(),
                kind: "scalar",
            }),
        }
    }
}
