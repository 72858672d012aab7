//! Logs and traces for every command: `tracing` events to stderr (text or JSON), and, when an
//! OTLP endpoint is given, spans to an OpenTelemetry collector over gRPC.
//!
//! Data flow: the libraries open spans and emit events with `tracing`; [`init`] installs one
//! subscriber with two layers, each with its own filter: the log layer (`--log`) writes to
//! stderr, the OpenTelemetry layer (`--trace-filter`, goodput's own spans by default) hands
//! finished spans to the SDK's batch processor, which exports them from its own thread. The
//! returned [`Telemetry`] flushes what is still queued when the command ends.
//!
//! The batch processor exports from a plain thread of its own, while tonic's channel needs a
//! Tokio runtime to run its connection on. The exporter is therefore built inside a small
//! runtime owned by [`Telemetry`] (one worker thread), independent of the command's own runtime:
//! the sync commands (`sim run`) have none, and the export must outlive the async ones to flush.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What to log and where to send traces.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `tracing` env-filter for the stderr log.
    pub log_filter: String,
    pub json: bool,
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`; no export when None.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// `tracing` env-filter selecting the spans exported.
    pub trace_filter: String,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--log `{filter}`: {source}")]
    LogFilter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("--trace-filter `{filter}`: {source}")]
    TraceFilter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error(
        "--otlp-endpoint `{0}`: give an http:// or https:// URL, e.g. http://otel-collector:4317"
    )]
    Endpoint(String),
    #[error("starting the OTLP export runtime: {0}")]
    Runtime(std::io::Error),
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Keeps the export pipeline alive; [`Telemetry::shutdown`] flushes it.
#[must_use = "dropping it without shutdown loses the spans still queued"]
pub struct Telemetry {
    export: Option<(SdkTracerProvider, tokio::runtime::Runtime)>,
}

impl Telemetry {
    /// Exports the spans still queued (a few seconds at most) and stops the exporter. Call it
    /// outside any async runtime: the SDK blocks.
    pub fn shutdown(self) {
        if let Some((provider, runtime)) = self.export {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: OTLP trace export did not flush: {e}");
            }
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Installs the global subscriber. A second call (tests) leaves the first in place.
pub fn init(cfg: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let log_filter =
        EnvFilter::try_new(&cfg.log_filter).map_err(|source| TelemetryError::LogFilter {
            filter: cfg.log_filter.clone(),
            source,
        })?;
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = if cfg.json {
        log.json().with_filter(log_filter).boxed()
    } else {
        log.with_filter(log_filter).boxed()
    };
    let Some(endpoint) = &cfg.otlp_endpoint else {
        let _ = tracing_subscriber::registry().with(log).try_init();
        return Ok(Telemetry { export: None });
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(TelemetryError::Endpoint(endpoint.clone()));
    }
    let trace_filter =
        EnvFilter::try_new(&cfg.trace_filter).map_err(|source| TelemetryError::TraceFilter {
            filter: cfg.trace_filter.clone(),
            source,
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(TelemetryError::Runtime)?;
    let exporter = {
        // The channel spawns its connection worker on the runtime it is built in.
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()?
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build();
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("goodput"))
        .with_filter(trace_filter);
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(traces)
        .try_init();
    Ok(Telemetry {
        export: Some((provider, runtime)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(otlp: Option<&str>) -> TelemetryConfig {
        TelemetryConfig {
            log_filter: "warn".into(),
            json: false,
            otlp_endpoint: otlp.map(Into::into),
            service_name: "goodput".into(),
            trace_filter: "goodput=info".into(),
        }
    }

    #[test]
    fn bad_filters_and_endpoints_are_named() {
        let mut c = config(None);
        c.log_filter = "info,=[".into();
        assert!(init(&c).err().unwrap().to_string().contains("--log"));
        let mut c = config(Some("http://127.0.0.1:4317"));
        c.trace_filter = "goodput=loud".into();
        assert!(
            init(&c)
                .err()
                .unwrap()
                .to_string()
                .contains("--trace-filter")
        );
        let e = init(&config(Some("otel-collector:4317"))).err().unwrap();
        assert!(e.to_string().contains("http://"), "{e}");
    }
}
