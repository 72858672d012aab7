//! A local Envoy in front of the scheduler, for tests, benchmarks and trying it out: the v3
//! bootstrap of `reference/scheduler-protocol.md` §2.3 (ext_proc filter + ORIGINAL_DST cluster
//! reading `x-gateway-destination-endpoint`), or, for comparison, the same listener with a
//! plain round-robin cluster over the endpoints and no ext_proc; and the Envoy process itself.
//!
//! The binary comes from `scripts/tools.sh` (`.tools/venv/bin/envoy`, or `$GOODPUT_TOOLS`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the ext_proc filter sends request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// Request and response bodies FULL_DUPLEX_STREAMED, trailers SEND (what gateways use).
    FullDuplex,
    /// Request body BUFFERED, response body not sent.
    Buffered,
    /// Request body FULL_DUPLEX_STREAMED, response headers only: routing and in-flight
    /// tracking without the per-chunk round trips of the response (no TTFT/TPOT feedback).
    RequestOnly,
}

/// What Envoy routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The scheduler's ext_proc on this loopback port, then ORIGINAL_DST.
    Picker { ext_proc_port: u16, mode: BodyMode },
    /// A STATIC round-robin cluster over these `ip:port` endpoints, no ext_proc.
    RoundRobin { endpoints: Vec<String> },
}

/// The Envoy bootstrap YAML: a listener on `127.0.0.1:listen`, admin on `127.0.0.1:admin`.
pub fn bootstrap(listen: u16, admin: u16, upstream: &Upstream) -> String {
    let route_and_filters = |cluster: &str, ext_proc: &str| {
        format!(
            r#"          route_config:
            name: inference
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: {cluster}
                  timeout: 86400s
                  idle_timeout: 86400s
          http_filters:
{ext_proc}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
"#
        )
    };
    let (filters, clusters) = match upstream {
        Upstream::Picker {
            ext_proc_port,
            mode,
        } => {
            let processing = match mode {
                BodyMode::FullDuplex => {
                    "request_header_mode: SEND\n                response_header_mode: SEND\n                request_body_mode: FULL_DUPLEX_STREAMED\n                response_body_mode: FULL_DUPLEX_STREAMED\n                request_trailer_mode: SEND\n                response_trailer_mode: SEND"
                }
                BodyMode::Buffered => {
                    "request_header_mode: SEND\n                response_header_mode: SEND\n                request_body_mode: BUFFERED\n                response_body_mode: NONE\n                request_trailer_mode: SKIP\n                response_trailer_mode: SKIP"
                }
                BodyMode::RequestOnly => {
                    "request_header_mode: SEND\n                response_header_mode: SEND\n                request_body_mode: FULL_DUPLEX_STREAMED\n                response_body_mode: NONE\n                request_trailer_mode: SEND\n                response_trailer_mode: SKIP"
                }
            };
            let ext_proc = format!(
                r#"          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {{cluster_name: ext_proc}}
                timeout: 10s
              failure_mode_allow: false
              message_timeout: 10s
              metadata_options:
                receiving_namespaces: {{untyped: ["envoy.lb"]}}
              processing_mode:
                {processing}
"#
            );
            let clusters = format!(
                r#"  - name: original_destination_cluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
    original_dst_lb_config:
      use_http_header: true
      http_header_name: x-gateway-destination-endpoint
  - name: ext_proc
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: ext_proc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {ext_proc_port}}}}}
"#
            );
            (
                route_and_filters("original_destination_cluster", &ext_proc),
                clusters,
            )
        }
        Upstream::RoundRobin { endpoints } => {
            let mut eps = String::new();
            for e in endpoints {
                let (host, port) = e.rsplit_once(':').unwrap_or((e.as_str(), "80"));
                eps.push_str(&format!(
                    "        - endpoint:\n            address: {{socket_address: {{address: {host}, port_value: {port}}}}}\n"
                ));
            }
            let clusters = format!(
                r#"  - name: pool
    type: STATIC
    connect_timeout: 5s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: pool
      endpoints:
      - lb_endpoints:
{eps}"#
            );
            (route_and_filters("pool", ""), clusters)
        }
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: inference
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inference
{filters}  clusters:
{clusters}"#
    )
}

/// Where the Envoy binary is: `$GOODPUT_TOOLS/envoy`, else `<repo>/.tools/venv/bin/envoy`.
pub fn envoy_binary(repo_root: &Path) -> Result<PathBuf, EnvoyError> {
    let dir = std::env::var("GOODPUT_TOOLS")
        .map_or_else(|_| repo_root.join(".tools/venv/bin"), PathBuf::from);
    let bin = dir.join("envoy");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(EnvoyError::Missing(bin.display().to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("envoy not found at {0}: run `bash scripts/tools.sh` (or set GOODPUT_TOOLS)")]
    Missing(String),
    #[error("envoy: {0}")]
    Io(#[from] std::io::Error),
    #[error("envoy exited ({status}):\n{log}")]
    Exited { status: String, log: String },
    #[error("envoy not ready after {0:?}")]
    NotReady(Duration),
}

/// A running Envoy, killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct EnvoyProcess {
    child: Child,
    dir: PathBuf,
    /// `http://127.0.0.1:<listen>`.
    pub url: String,
    pub admin_port: u16,
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port (bound and released; another process could take it in between).
pub fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

impl EnvoyProcess {
    /// The Envoy process's id (for CPU accounting in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts Envoy with [`bootstrap`] and waits until its admin `/ready` answers 200.
    pub async fn start(binary: &Path, upstream: &Upstream) -> Result<Self, EnvoyError> {
        let (listen, admin) = (free_port()?, free_port()?);
        let dir =
            std::env::temp_dir().join(format!("goodput-envoy-{}-{listen}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("envoy.yaml");
        std::fs::write(&cfg, bootstrap(listen, admin, upstream))?;
        let log = std::fs::File::create(dir.join("envoy.log"))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&cfg)
            .args([
                "--use-dynamic-base-id",
                "--concurrency",
                "2",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut envoy = Self {
            child,
            dir: dir.clone(),
            url: format!("http://127.0.0.1:{listen}"),
            admin_port: admin,
        };
        let client = reqwest::Client::new();
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = envoy.child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
                return Err(EnvoyError::Exited {
                    status: status.to_string(),
                    log,
                });
            }
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{admin}/ready"))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                return Err(EnvoyError::NotReady(limit));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstraps_name_the_pieces_envoy_needs() {
        let p = bootstrap(
            8081,
            9901,
            &Upstream::Picker {
                ext_proc_port: 9002,
                mode: BodyMode::FullDuplex,
            },
        );
        for needle in [
            "request_body_mode: FULL_DUPLEX_STREAMED",
            "response_trailer_mode: SEND",
            "http_header_name: x-gateway-destination-endpoint",
            "type: ORIGINAL_DST",
            "port_value: 9002",
        ] {
            assert!(p.contains(needle), "{needle}\n{p}");
        }
        let rr = bootstrap(
            8081,
            9901,
            &Upstream::RoundRobin {
                endpoints: vec!["127.0.0.1:8000".into(), "127.0.0.1:8001".into()],
            },
        );
        assert!(!rr.contains("ext_proc"));
        assert!(rr.contains("port_value: 8001"));
    }
}
