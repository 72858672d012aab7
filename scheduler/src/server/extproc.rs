//! The Envoy ext_proc conversation of one HTTP request, as the Gateway API Inference
//! Extension's endpoint picker holds it.
//!
//! Data flow per stream (one gRPC stream per downstream request):
//! 1. `request_headers`: kept. Body-less requests are routed at once.
//! 2. `request_body` chunks: buffered until `end_of_stream` (or the request trailers). The body
//!    and headers become [`RequestFeatures`] (400 on a malformed body), the pool picks, and
//!    the answer is the headers response carrying `x-gateway-destination-endpoint` (and
//!    `x-prefiller-host-port` for a P/D split) plus the same address under the `envoy.lb`
//!    dynamic metadata; then the body goes back unchanged. With FULL_DUPLEX_STREAMED the
//!    headers answer waits for the body and the body is re-sent as `streamed_response` chunks
//!    of at most 62,000 bytes; with BUFFERED (or any other mode) the headers are answered at
//!    once and the routing header rides on the body response, where Envoy applies it.
//!    503 when no endpoint is ready (after holding the request up to the configured hold time,
//!    counted in `requests_waiting`), 429 when a sheddable request is shed.
//! 3. Response path: every message is answered (bodies echoed in full-duplex mode) while the
//!    stream is observed: the first body chunk is the first token (TTFT from dispatch), SSE
//!    events count output tokens (or the usage block's `completion_tokens`), and at the end
//!    the measured TTFT/TPOT go to the predictor with the features of the dispatch.
//! 4. However the stream ends (completed, client gone, upstream died mid-stream), the
//!    request leaves the endpoint's in-flight count exactly once ([`Dispatched`]'s `Drop`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse, StreamedBodyResponse,
    TrailersResponse, body_mutation, processing_request, processing_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use futures::Stream;
use goodput_predictor::{Features, Predictor, Sample};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::latency::NoPredictions;
use crate::metrics::{EndpointLabels, KindLabels, SchedulerMetrics};
use crate::pick::{Decision, Outcome, PickRequest};
use crate::prefix::{BLOCK_TOKENS, text_block_hashes};
use crate::request::RequestFeatures;
use crate::server::pool::{Applied, Finished, Pool, Ticket, TokenClock};

/// Header and metadata key naming the chosen endpoint.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// Dynamic metadata namespace Envoy's load balancers read.
pub const LB_NAMESPACE: &str = "envoy.lb";
/// Header telling a decode pod's sidecar which prefill pod to use.
pub const PREFILLER_HEADER: &str = "x-prefiller-host-port";
/// Largest body chunk re-sent in full-duplex mode (GIE's `BodyByteLimit`).
pub const BODY_CHUNK: usize = 62_000;
/// Largest request body accepted.
pub const MAX_BODY: usize = 16 << 20;

const FULL_DUPLEX_STREAMED: i32 = 4;

/// Whether picks use the predictors (they live in the [`Pool`], one per variant).
#[derive(Debug, Default)]
pub struct PredictionSwitch {
    disabled: AtomicBool,
}

impl PredictionSwitch {
    /// Turns predictions off (every pick is a load-based fallback) or back on; training
    /// samples are still accepted.
    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Relaxed);
    }

    pub fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }
}

/// How often a held request looks for an endpoint again.
const HOLD_POLL: Duration = Duration::from_millis(50);

/// One request held for lack of an endpoint, counted in `requests_waiting` while it lives
/// (also when the stream ends while it waits).
struct Waiting<'a>(&'a SchedulerMetrics);

impl<'a> Waiting<'a> {
    fn new(metrics: &'a SchedulerMetrics) -> Self {
        metrics.requests_waiting.inc();
        Self(metrics)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.requests_waiting.dec();
    }
}

/// What every stream shares.
pub struct Shared {
    pub pool: Mutex<Pool>,
    pub latency: PredictionSwitch,
    pub metrics: SchedulerMetrics,
    /// How long a request waits for an endpoint when none can take it.
    pub hold_when_no_endpoint: Duration,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        match self.pool.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn set_in_flight(&self, pool: &Pool, slot: usize) {
        self.metrics
            .in_flight
            .get_or_create(&EndpointLabels {
                endpoint: pool.addr(slot).to_string(),
            })
            .set(i64::from(pool.in_flight(slot)));
    }

    /// Keeps `endpoint_requests_in_flight` to the endpoints the pool holds: an endpoint that
    /// left loses its series (the label stays bounded by the pool size).
    fn record_finished(&self, f: &Finished) {
        match f {
            Finished::InFlight { addr, in_flight } => {
                self.metrics
                    .in_flight
                    .get_or_create(&EndpointLabels {
                        endpoint: addr.clone(),
                    })
                    .set(i64::from(*in_flight));
            }
            Finished::Released { addr } => {
                self.metrics.in_flight.remove(&EndpointLabels {
                    endpoint: addr.clone(),
                });
            }
            Finished::Unknown => {}
        }
    }

    /// Makes `endpoints` the pool's set (see [`Pool::set_endpoints`]) and drops the in-flight
    /// series of the endpoints that are gone.
    pub fn set_endpoints(&self, endpoints: Vec<crate::server::pool::EndpointSpec>) -> Applied {
        let applied = self.lock().set_endpoints(endpoints);
        for addr in &applied.removed {
            self.metrics.in_flight.remove(&EndpointLabels {
                endpoint: addr.clone(),
            });
        }
        applied
    }
}

/// The ext_proc gRPC service.
#[derive(Clone)]
pub struct ExtProc {
    shared: Arc<Shared>,
}

impl ExtProc {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = ProcessStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let conv = Conversation::new(Arc::clone(&self.shared), tx);
        tokio::spawn(conv.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A routed request, counted in flight until dropped.
struct Dispatched {
    shared: Arc<Shared>,
    ticket: Ticket,
    /// Where this response marks when its endpoint streamed a token (a feature of the next
    /// picks' predictions there).
    token_clock: Option<TokenClock>,
    /// The variant's predictor, trained with this request's measurements.
    predictor: Option<Arc<Predictor>>,
    features: Features,
    slo_ttft_ms: Option<f64>,
    slo_tpot_ms: Option<f64>,
    started: Instant,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    events: u32,
    usage_tokens: Option<u32>,
    streaming_response: bool,
    ok_status: bool,
}

impl Dispatched {
    fn on_body(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let now = Instant::now();
        if let Some(clock) = &self.token_clock {
            clock.mark(now);
        }
        if self.first_at.is_none() {
            self.first_at = Some(now);
            let mut pool = self.shared.lock();
            pool.first_token(&self.ticket);
        }
        self.last_at = Some(now);
        let text = String::from_utf8_lossy(chunk);
        for event in text.split("data:").skip(1) {
            let e = event.trim_start();
            if e.starts_with("[DONE]") || e.contains("\"choices\":[]") {
                continue;
            }
            self.events += 1;
        }
        if let Some(i) = text.rfind("\"completion_tokens\":") {
            let digits: String = text[i + 20..]
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse() {
                self.usage_tokens = Some(n);
            }
        }
    }

    /// The response completed: measure and train.
    fn completed(&mut self) {
        if !(self.ok_status && self.streaming_response) {
            return;
        }
        let Some(first) = self.first_at else {
            return;
        };
        let ttft_ms = first.duration_since(self.started).as_secs_f64() * 1e3;
        let tokens = self.usage_tokens.unwrap_or(self.events);
        let tpot_ms = match self.last_at {
            Some(last) if tokens > 1 => {
                Some(last.duration_since(first).as_secs_f64() * 1e3 / f64::from(tokens - 1))
            }
            _ => None,
        };
        let m = &self.shared.metrics;
        m.observed_ttft.observe(ttft_ms / 1e3);
        if let Some(t) = tpot_ms {
            m.observed_tpot.observe(t / 1e3);
        }
        if self.slo_ttft_ms.is_some_and(|s| ttft_ms > s) {
            m.slo_violations
                .get_or_create(&KindLabels { kind: "ttft" })
                .inc();
        }
        if let (Some(s), Some(t)) = (self.slo_tpot_ms, tpot_ms)
            && t > s
        {
            m.slo_violations
                .get_or_create(&KindLabels { kind: "tpot" })
                .inc();
        }
        if let Some(p) = &self.predictor {
            p.add_samples(
                &[Sample {
                    features: self.features,
                    ttft_ms: Some(ttft_ms),
                    tpot_ms,
                }],
                unix_now(),
            );
            m.training_samples.inc();
        }
    }
}

impl Drop for Dispatched {
    fn drop(&mut self) {
        let finished = self
            .shared
            .lock()
            .finished(&self.ticket, self.first_at.is_some());
        self.shared.record_finished(&finished);
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

struct Conversation {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<ProcessingResponse, Status>>,
    request_mode: i32,
    response_mode: i32,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    body_eos: bool,
    headers_answered: bool,
    routed: bool,
    dispatched: Option<Dispatched>,
}

/// Why a conversation stops early.
enum Stop {
    /// An immediate response was sent (or the peer is gone).
    Done,
}

impl Conversation {
    fn new(shared: Arc<Shared>, tx: mpsc::Sender<Result<ProcessingResponse, Status>>) -> Self {
        Self {
            shared,
            tx,
            request_mode: FULL_DUPLEX_STREAMED,
            response_mode: FULL_DUPLEX_STREAMED,
            headers: Vec::new(),
            body: Vec::new(),
            body_eos: false,
            headers_answered: false,
            routed: false,
            dispatched: None,
        }
    }

    async fn send(&self, response: processing_response::Response) -> Result<(), Stop> {
        self.send_full(ProcessingResponse {
            response: Some(response),
            ..Default::default()
        })
        .await
    }

    async fn send_full(&self, r: ProcessingResponse) -> Result<(), Stop> {
        self.tx.send(Ok(r)).await.map_err(|_| Stop::Done)
    }

    fn duplex(&self) -> bool {
        self.request_mode == FULL_DUPLEX_STREAMED
    }

    async fn run(mut self, mut inbound: Streaming<ProcessingRequest>) {
        let mut first = true;
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                // Envoy closed the stream (done, or the request was reset): stop.
                Ok(None) | Err(_) => break,
            };
            if first {
                first = false;
                if let Some(pc) = &msg.protocol_config {
                    self.request_mode = pc.request_body_mode;
                    self.response_mode = pc.response_body_mode;
                }
            }
            let Some(req) = msg.request else { continue };
            if self.handle(req).await.is_err() {
                break;
            }
        }
        // The Drop of `dispatched` takes the request out of flight.
        self.dispatched.take();
    }

    async fn handle(&mut self, req: processing_request::Request) -> Result<(), Stop> {
        use processing_request::Request as R;
        use processing_response::Response as W;
        match req {
            R::RequestHeaders(h) => self.request_headers(h).await,
            R::RequestBody(b) => self.request_body(b).await,
            R::RequestTrailers(_) => {
                if !self.routed {
                    self.route().await?;
                }
                self.send(W::RequestTrailers(TrailersResponse::default()))
                    .await
            }
            R::ResponseHeaders(h) => {
                let status = header(&h, ":status").and_then(|s| s.parse::<u16>().ok());
                let sse =
                    header(&h, "content-type").is_some_and(|c| c.starts_with("text/event-stream"));
                if let Some(d) = self.dispatched.as_mut() {
                    d.ok_status = status.is_some_and(|s| (200..300).contains(&s));
                    d.streaming_response = sse;
                }
                self.send(W::ResponseHeaders(HeadersResponse::default()))
                    .await?;
                if h.end_of_stream {
                    self.finish();
                }
                Ok(())
            }
            R::ResponseBody(b) => {
                if let Some(d) = self.dispatched.as_mut() {
                    d.on_body(&b.body);
                }
                let eos = b.end_of_stream;
                let answer = if self.response_mode == FULL_DUPLEX_STREAMED {
                    streamed_body(b.body, eos)
                } else {
                    BodyResponse::default()
                };
                self.send(W::ResponseBody(answer)).await?;
                if eos {
                    self.finish();
                }
                Ok(())
            }
            R::ResponseTrailers(_) => {
                self.send(W::ResponseTrailers(TrailersResponse::default()))
                    .await?;
                self.finish();
                Ok(())
            }
        }
    }

    fn finish(&mut self) {
        if let Some(mut d) = self.dispatched.take() {
            d.completed();
        }
    }

    async fn request_headers(&mut self, h: HttpHeaders) -> Result<(), Stop> {
        self.headers = h
            .headers
            .iter()
            .flat_map(|m| m.headers.iter())
            .map(|v| (v.key.to_ascii_lowercase(), header_value(v)))
            .collect();
        if h.end_of_stream {
            self.body_eos = true;
            return self.route().await;
        }
        if !self.duplex() {
            // Envoy waits for this answer before it sends the buffered body.
            self.headers_answered = true;
            self.send(processing_response::Response::RequestHeaders(
                HeadersResponse::default(),
            ))
            .await?;
        }
        Ok(())
    }

    async fn request_body(&mut self, b: HttpBody) -> Result<(), Stop> {
        if self.routed {
            // More body after routing (not expected): pass it on.
            let answer = if self.duplex() {
                streamed_body(b.body, b.end_of_stream)
            } else {
                BodyResponse::default()
            };
            return self
                .send(processing_response::Response::RequestBody(answer))
                .await;
        }
        if self.body.len() + b.body.len() > MAX_BODY {
            self.shared.metrics.pick("error");
            return self
                .immediate(413, &format!("request body over {MAX_BODY} bytes"))
                .await;
        }
        self.body.extend_from_slice(&b.body);
        if b.end_of_stream {
            self.body_eos = true;
            self.route().await?;
        }
        Ok(())
    }

    async fn immediate(&self, code: i32, message: &str) -> Result<(), Stop> {
        let _ = self
            .send(processing_response::Response::ImmediateResponse(
                ImmediateResponse {
                    status: Some(HttpStatus { code }),
                    body: format!("inference error: {code} - {message}").into_bytes(),
                    details: message.chars().take(100).collect(),
                    ..Default::default()
                },
            ))
            .await;
        Err(Stop::Done)
    }

    async fn route(&mut self) -> Result<(), Stop> {
        self.routed = true;
        let headers = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let features = if self.body.is_empty() {
            let mut f = RequestFeatures {
                prompt_tokens: 1,
                ..Default::default()
            };
            f.apply_headers(headers).map(|()| f)
        } else {
            RequestFeatures::parse(&self.body, headers)
        };
        let features = match features {
            Ok(f) => f,
            Err(e) => {
                self.shared.metrics.pick("error");
                return self.immediate(400, &e.to_string()).await;
            }
        };
        let mut hashes = Vec::new();
        text_block_hashes(&features.model, &features.prefix_text, &mut hashes);
        let pick = PickRequest {
            prompt_tokens: features.prompt_tokens,
            output_tokens: features.expected_output_tokens(),
            slo_ttft_ms: features.slo_ttft_ms,
            slo_tpot_ms: features.slo_tpot_ms,
            sheddable: features.sheddable,
            hashes: &hashes,
            block_tokens: BLOCK_TOKENS as u32,
        };
        // With nothing able to take the request (a fleet at zero, or every replica starting),
        // hold it and pick again until an endpoint is ready or the hold time is over; while
        // held it counts in `requests_waiting`, what an autoscaler wakes a fleet on.
        let hold_until = Instant::now() + self.shared.hold_when_no_endpoint;
        let mut waiting: Option<Waiting<'_>> = None;
        let (started, (decision, ticket, dest, prefiller, predictor, token_clock)) = loop {
            let started = Instant::now();
            let picked = {
                let mut pool = self.shared.lock();
                let (d, t) = if self.shared.latency.disabled() {
                    pool.pick(&pick, &NoPredictions, started)
                } else {
                    pool.pick_predicted(&pick, started)
                };
                let dest = t.map(|t| pool.addr(t.slot).to_string());
                let pre = t
                    .and_then(|t| t.prefill_slot)
                    .map(|p| pool.addr(p).to_string());
                let predictor = t.and_then(|t| pool.predictor(t.slot));
                let clock = t.and_then(|t| pool.token_clock(&t));
                if let Some(t) = t {
                    self.shared.set_in_flight(&pool, t.slot);
                }
                (d, t, dest, pre, predictor, clock)
            };
            if picked.0 == Decision::NoEndpoint && started < hold_until {
                waiting.get_or_insert_with(|| Waiting::new(&self.shared.metrics));
                tokio::time::sleep(HOLD_POLL.min(hold_until - started)).await;
                continue;
            }
            break (started, picked);
        };
        drop(waiting);
        let m = &self.shared.metrics;
        m.pick_duration.observe(started.elapsed().as_secs_f64());
        let (route, ticket, dest) = match (decision, ticket, dest) {
            (Decision::Route(r), Some(t), Some(dest)) => (r, t, dest),
            (Decision::Shed, _, _) => {
                m.pick("shed");
                return self
                    .immediate(429, "system saturated, sheddable request dropped")
                    .await;
            }
            _ => {
                m.pick("no_endpoint");
                return self.immediate(503, "no ready endpoint").await;
            }
        };
        m.pick(match route.outcome {
            Outcome::Scored => "scored",
            Outcome::Fallback => "fallback",
        });
        if let Some(p) = route.predicted {
            m.predicted_ttft.observe(p.ttft_ms / 1e3);
            if let Some(t) = p.tpot_ms {
                m.predicted_tpot.observe(t / 1e3);
            }
            if let Some(slo) = features.slo_ttft_ms {
                m.ttft_headroom.observe((slo - p.ttft_ms) / 1e3);
            }
        }
        self.dispatched = Some(Dispatched {
            shared: Arc::clone(&self.shared),
            ticket,
            token_clock,
            predictor,
            features: route.features,
            slo_ttft_ms: features.slo_ttft_ms,
            slo_tpot_ms: features.slo_tpot_ms,
            started,
            first_at: None,
            last_at: None,
            events: 0,
            usage_tokens: None,
            streaming_response: false,
            ok_status: false,
        });

        let mut set = vec![set_header(DESTINATION_HEADER, &dest)];
        if let Some(p) = &prefiller {
            set.push(set_header(PREFILLER_HEADER, p));
        }
        let common = CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: set,
                remove_headers: Vec::new(),
            }),
            clear_route_cache: true,
            ..Default::default()
        };
        let metadata = Some(lb_metadata(&dest));
        if self.headers_answered {
            // Buffered mode: the header mutation is applied from the body response.
            return self
                .send_full(ProcessingResponse {
                    response: Some(processing_response::Response::RequestBody(BodyResponse {
                        response: Some(common),
                    })),
                    dynamic_metadata: metadata,
                    ..Default::default()
                })
                .await;
        }
        self.headers_answered = true;
        self.send_full(ProcessingResponse {
            response: Some(processing_response::Response::RequestHeaders(
                HeadersResponse {
                    response: Some(common),
                },
            )),
            dynamic_metadata: metadata,
            ..Default::default()
        })
        .await?;
        if self.body.is_empty() {
            return Ok(());
        }
        let body = std::mem::take(&mut self.body);
        let n = body.len().div_ceil(BODY_CHUNK);
        for (i, chunk) in body.chunks(BODY_CHUNK).enumerate() {
            let last = i + 1 == n && self.body_eos;
            self.send(processing_response::Response::RequestBody(streamed_body(
                chunk.to_vec(),
                last,
            )))
            .await?;
        }
        Ok(())
    }
}

fn header_value(v: &HeaderValue) -> String {
    if v.raw_value.is_empty() {
        v.value.clone()
    } else {
        String::from_utf8_lossy(&v.raw_value).into_owned()
    }
}

fn header(h: &HttpHeaders, name: &str) -> Option<String> {
    h.headers
        .iter()
        .flat_map(|m| m.headers.iter())
        .find(|v| v.key.eq_ignore_ascii_case(name))
        .map(header_value)
}

fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        ..Default::default()
    }
}

fn streamed_body(body: Vec<u8>, end_of_stream: bool) -> BodyResponse {
    BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(
                    StreamedBodyResponse {
                        body,
                        end_of_stream,
                        ..Default::default()
                    },
                )),
            }),
            ..Default::default()
        }),
    }
}

fn lb_metadata(dest: &str) -> Struct {
    let inner = Struct {
        fields: [(
            DESTINATION_HEADER.to_string(),
            Value {
                kind: Some(value::Kind::StringValue(dest.into())),
            },
        )]
        .into_iter()
        .collect(),
    };
    Struct {
        fields: [(
            LB_NAMESPACE.to_string(),
            Value {
                kind: Some(value::Kind::StructValue(inner)),
            },
        )]
        .into_iter()
        .collect(),
    }
}
