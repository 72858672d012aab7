//! One endpoint's state at the moment of a pick: what its `/metrics` said at the last scrape,
//! plus what the picker itself dispatched since (requests in flight, prompt tokens not yet
//! prefilled), and its health.
//!
//! Data flow: the server's scraper and stream tracker (or the simulator adapter) fill an
//! [`EndpointView`] per endpoint; pickers read a slice of them. Pure data.

use goodput_predictor::{Features, PodType};

/// Whether an endpoint's metrics can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Health {
    /// Scraped recently and answering.
    #[default]
    Ready,
    /// Its last good scrape is older than the staleness limit: used only when nothing is ready.
    Stale,
    /// Never scraped, or scrapes fail: not routed to.
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Stale => "stale",
            Health::Down => "down",
        }
    }
}

/// One endpoint as a picker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EndpointView {
    /// Stable slot of the endpoint in the prefix index (never reused while it is known).
    pub slot: usize,
    /// Index of its variant (the latency model to ask).
    pub variant: usize,
    pub role: PodType,
    pub health: Health,
    /// `vllm:num_requests_running` at the last scrape.
    pub running: u32,
    /// `vllm:num_requests_waiting` at the last scrape.
    pub waiting: u32,
    /// `vllm:kv_cache_usage_perc`, 0..1.
    pub kv_usage: f64,
    /// Requests this picker sent there that have not finished.
    pub in_flight: u32,
    /// Uncached prompt tokens dispatched there that have not produced a first token.
    pub prefill_tokens_in_flight: u64,
    /// Output tokens still expected from the requests in flight there (0 when unknown).
    pub decode_tokens_in_flight: u64,
    /// Milliseconds since a response from there last streamed a token, None when unknown (no
    /// response seen yet, or response bodies not streamed through the scheduler).
    pub ms_since_last_token: Option<f64>,
    /// Milliseconds since the oldest request dispatched there that has not produced its first
    /// token was dispatched, None when there is none.
    pub ms_since_oldest_prefill: Option<f64>,
}

impl EndpointView {
    /// Requests waiting, counting the ones dispatched since the last scrape: the scrape lags,
    /// the in-flight count does not.
    #[inline]
    pub fn waiting_now(&self) -> u32 {
        self.waiting
            .max(self.in_flight.saturating_sub(self.running))
    }

    /// Requests held (running plus waiting).
    #[inline]
    pub fn queue(&self) -> u32 {
        self.running + self.waiting_now()
    }

    /// Whether this endpoint can take a request from the client (not a prefill-only pod).
    #[inline]
    pub fn serves_decode(&self) -> bool {
        !matches!(self.role, PodType::Prefill)
    }

    /// The predictor's row for a request of `input_tokens` with `prefix` of it cached here.
    #[inline]
    pub fn features(&self, input_tokens: u32, prefix: f64) -> Features {
        Features {
            kv_cache_percentage: self.kv_usage.clamp(0.0, 1.0),
            input_token_length: input_tokens,
            num_request_waiting: self.waiting_now(),
            num_request_running: self.running,
            num_tokens_generated: 0,
            prefix_cache_score: prefix.clamp(0.0, 1.0),
            pod_type: self.role,
            prefill_tokens_in_flight: self.prefill_tokens_in_flight,
            decode_tokens_in_flight: self.decode_tokens_in_flight,
            ms_since_last_token: self.ms_since_last_token,
            ms_since_oldest_prefill: self.ms_since_oldest_prefill,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_requests_count_before_the_next_scrape() {
        let e = EndpointView {
            running: 2,
            waiting: 0,
            in_flight: 5,
            ..Default::default()
        };
        assert_eq!(e.waiting_now(), 3);
        assert_eq!(e.queue(), 5);
        let f = e.features(100, 0.5);
        assert_eq!(f.num_request_waiting, 3);
        assert_eq!(f.prefix_cache_score, 0.5);
    }
}
