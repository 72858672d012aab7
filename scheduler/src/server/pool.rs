//! The endpoint pool the server routes over: static specs (`--endpoints` or a file), the
//! latest scrape of each, the requests dispatched to each, and the picker with its prefix
//! index, all behind one lock so that a pick sees one consistent snapshot.
//!
//! Data flow: [`parse_endpoints`] turns the command line or file into [`EndpointSpec`]s; the
//! scraper calls [`Pool::scraped`] / [`Pool::scrape_failed`]; the ext_proc stream calls
//! [`Pool::pick`] (which builds the views, asks the picker, records the prompt's blocks and
//! counts the request in flight), [`Pool::first_token`] and [`Pool::finished`].

use std::time::{Duration, Instant};

use goodput_predictor::PodType;

use crate::endpoint::{EndpointView, Health};
use crate::latency::LatencyModel;
use crate::pick::{Decision, PickRequest, Picker};
use crate::prefix::PrefixIndex;
use crate::server::scrape::Scraped;

/// One endpoint as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    /// `ip:port` (what Envoy's ORIGINAL_DST cluster connects to).
    pub addr: String,
    pub role: PodType,
    /// Catalog accelerator id, for the variant's physics prior.
    pub accelerator: Option<String>,
    pub tp: u32,
}

impl EndpointSpec {
    /// The variant key: endpoints with equal keys share a predictor.
    pub fn variant_key(&self) -> (Option<String>, u32, u8) {
        (self.accelerator.clone(), self.tp, self.role.code())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint `{entry}`: {message}")]
pub struct SpecError {
    pub entry: String,
    pub message: String,
}

/// Parses endpoint entries separated by commas or new lines; `#` starts a comment. Each entry
/// is `host:port` followed by optional space-separated `role=prefill|decode|unified`,
/// `accelerator=ID`, `tp=N`.
pub fn parse_endpoints(text: &str) -> Result<Vec<EndpointSpec>, SpecError> {
    let mut out = Vec::new();
    for raw in text.split([',', '\n']) {
        let entry = raw.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let err = |m: &str| SpecError {
            entry: entry.into(),
            message: m.into(),
        };
        let mut parts = entry.split_whitespace();
        let addr = parts.next().unwrap_or("");
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(err("expected host:port"));
        };
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(err("expected host:port with a port in 1..65535"));
        }
        let mut spec = EndpointSpec {
            addr: addr.into(),
            role: PodType::Monolithic,
            accelerator: None,
            tp: 1,
        };
        for kv in parts {
            match kv.split_once('=') {
                Some(("role", "prefill")) => spec.role = PodType::Prefill,
                Some(("role", "decode")) => spec.role = PodType::Decode,
                Some(("role", "unified" | "")) => spec.role = PodType::Monolithic,
                Some(("accelerator", a)) if !a.is_empty() => spec.accelerator = Some(a.into()),
                Some(("tp", n)) => {
                    spec.tp = n
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| err("tp must be a positive integer"))?;
                }
                _ => return Err(err(&format!("unknown attribute `{kv}`"))),
            }
        }
        if out.iter().any(|s: &EndpointSpec| s.addr == spec.addr) {
            return Err(err("listed twice"));
        }
        out.push(spec);
    }
    Ok(out)
}

/// Freshness limits of scraped metrics.
#[derive(Debug, Clone, Copy)]
pub struct Staleness {
    /// Older than this: stale (used only when nothing is ready).
    pub stale_after: Duration,
    /// Older than this, or this many failed scrapes in a row: down (never used).
    pub down_after: Duration,
    pub down_after_failures: u32,
}

#[derive(Debug)]
struct Entry {
    spec: EndpointSpec,
    variant: usize,
    scraped: Scraped,
    last_ok: Option<Instant>,
    failures: u32,
    in_flight: u32,
    prefill_tokens_in_flight: u64,
    /// Requests routed here since start.
    dispatched: u64,
}

/// A dispatched request's bookkeeping, handed back on first token and finish.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub slot: usize,
    pub prefill_slot: Option<usize>,
    pub uncached_tokens: u64,
}

/// The pool and the picker.
pub struct Pool {
    entries: Vec<Entry>,
    picker: Box<dyn Picker>,
    prefix: PrefixIndex,
    views: Vec<EndpointView>,
    staleness: Staleness,
}

impl Pool {
    /// `variants[i]` is the variant index of `specs[i]`.
    pub fn new(
        specs: Vec<EndpointSpec>,
        variants: Vec<usize>,
        picker: Box<dyn Picker>,
        staleness: Staleness,
    ) -> Self {
        Self {
            entries: specs
                .into_iter()
                .zip(variants)
                .map(|(spec, variant)| Entry {
                    spec,
                    variant,
                    scraped: Scraped::default(),
                    last_ok: None,
                    failures: 0,
                    in_flight: 0,
                    prefill_tokens_in_flight: 0,
                    dispatched: 0,
                })
                .collect(),
            picker,
            prefix: PrefixIndex::default(),
            views: Vec::new(),
            staleness,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn addr(&self, slot: usize) -> &str {
        self.entries.get(slot).map_or("", |e| e.spec.addr.as_str())
    }

    pub fn variant(&self, slot: usize) -> usize {
        self.entries.get(slot).map_or(0, |e| e.variant)
    }

    pub fn in_flight(&self, slot: usize) -> u32 {
        self.entries.get(slot).map_or(0, |e| e.in_flight)
    }

    /// Requests routed to endpoint `slot` since start.
    pub fn dispatched(&self, slot: usize) -> u64 {
        self.entries.get(slot).map_or(0, |e| e.dispatched)
    }

    pub fn scraped(&mut self, slot: usize, s: Scraped, at: Instant) {
        if let Some(e) = self.entries.get_mut(slot) {
            if e.last_ok.is_none() || e.failures >= self.staleness.down_after_failures {
                // First sight, or back after being down (a restarted pod): its cache is cold.
                self.prefix.forget(slot);
            }
            e.scraped = s;
            e.last_ok = Some(at);
            e.failures = 0;
        }
    }

    pub fn scrape_failed(&mut self, slot: usize) {
        if let Some(e) = self.entries.get_mut(slot) {
            e.failures = e.failures.saturating_add(1);
        }
    }

    /// Health of one endpoint at `now`.
    pub fn health(&self, slot: usize, now: Instant) -> Health {
        let Some(e) = self.entries.get(slot) else {
            return Health::Down;
        };
        let Some(last) = e.last_ok else {
            return Health::Down;
        };
        let age = now.saturating_duration_since(last);
        if e.failures >= self.staleness.down_after_failures || age > self.staleness.down_after {
            Health::Down
        } else if age > self.staleness.stale_after {
            Health::Stale
        } else {
            Health::Ready
        }
    }

    /// Endpoints per health state: (ready, stale, down).
    pub fn health_counts(&self, now: Instant) -> (i64, i64, i64) {
        let mut c = (0, 0, 0);
        for slot in 0..self.entries.len() {
            match self.health(slot, now) {
                Health::Ready => c.0 += 1,
                Health::Stale => c.1 += 1,
                Health::Down => c.2 += 1,
            }
        }
        c
    }

    /// Picks for `request`; on a route, records its blocks and counts it in flight.
    pub fn pick(
        &mut self,
        request: &PickRequest<'_>,
        latency: &dyn LatencyModel,
        now: Instant,
    ) -> (Decision, Option<Ticket>) {
        let mut views = std::mem::take(&mut self.views);
        views.clear();
        for (slot, e) in self.entries.iter().enumerate() {
            views.push(EndpointView {
                slot,
                variant: e.variant,
                role: e.spec.role,
                health: self.health(slot, now),
                running: e.scraped.running,
                waiting: e.scraped.waiting,
                kv_usage: e.scraped.kv_usage,
                in_flight: e.in_flight,
                prefill_tokens_in_flight: e.prefill_tokens_in_flight,
                decode_tokens_in_flight: 0,
            });
        }
        let d = self.picker.pick(request, &views, &self.prefix, latency);
        let ticket = match &d {
            Decision::Route(r) => {
                let slot = views[r.endpoint].slot;
                let prefill_slot = r.prefill.map(|p| views[p].slot);
                let cached = u64::from(r.matched_blocks) * u64::from(request.block_tokens);
                let uncached = u64::from(request.prompt_tokens).saturating_sub(cached);
                self.prefix.record(slot, request.hashes);
                if let Some(p) = prefill_slot {
                    self.prefix.record(p, request.hashes);
                }
                if let Some(e) = self.entries.get_mut(slot) {
                    e.in_flight += 1;
                    e.dispatched += 1;
                    e.prefill_tokens_in_flight += uncached;
                }
                Some(Ticket {
                    slot,
                    prefill_slot,
                    uncached_tokens: uncached,
                })
            }
            _ => None,
        };
        self.views = views;
        (d, ticket)
    }

    /// The request's first token arrived: its prompt is no longer queued for prefill.
    pub fn first_token(&mut self, t: &Ticket) {
        if let Some(e) = self.entries.get_mut(t.slot) {
            e.prefill_tokens_in_flight =
                e.prefill_tokens_in_flight.saturating_sub(t.uncached_tokens);
        }
    }

    /// The request ended (completed, failed or cancelled). `had_first_token` says whether
    /// [`Pool::first_token`] was already called for it.
    pub fn finished(&mut self, t: &Ticket, had_first_token: bool) {
        if !had_first_token {
            self.first_token(t);
        }
        if let Some(e) = self.entries.get_mut(t.slot) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::NoPredictions;
    use crate::pick::{Decision, RoundRobin};

    #[test]
    fn parses_lists_and_files() {
        let specs = parse_endpoints(
            "10.0.0.1:8000, 10.0.0.2:8000 role=prefill accelerator=h100 tp=2\n# comment\n\n[::1]:9000 role=decode",
        )
        .unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[1].role, PodType::Prefill);
        assert_eq!(specs[1].accelerator.as_deref(), Some("h100"));
        assert_eq!(specs[1].tp, 2);
        assert_eq!(specs[2].role, PodType::Decode);
        for bad in [
            "nohost",
            ":80",
            "h:0",
            "h:1 tp=0",
            "h:1 colour=red",
            "h:1,h:1",
        ] {
            let e = parse_endpoints(bad).unwrap_err();
            assert!(!e.entry.is_empty(), "{bad}: {e}");
        }
    }

    #[test]
    fn health_follows_scrapes_and_in_flight_follows_requests() {
        let st = Staleness {
            stale_after: Duration::from_secs(1),
            down_after: Duration::from_secs(10),
            down_after_failures: 3,
        };
        let specs = parse_endpoints("a:1,b:2").unwrap();
        let mut pool = Pool::new(specs, vec![0, 0], Box::new(RoundRobin::default()), st);
        let t0 = Instant::now();
        assert_eq!(pool.health(0, t0), Health::Down, "never scraped");
        pool.scraped(0, Scraped::default(), t0);
        assert_eq!(pool.health(0, t0), Health::Ready);
        assert_eq!(pool.health(0, t0 + Duration::from_secs(2)), Health::Stale);
        assert_eq!(pool.health(0, t0 + Duration::from_secs(11)), Health::Down);
        for _ in 0..3 {
            pool.scrape_failed(0);
        }
        assert_eq!(pool.health(0, t0), Health::Down);
        assert_eq!(pool.health_counts(t0), (0, 0, 2));

        pool.scraped(1, Scraped::default(), t0);
        let req = PickRequest {
            prompt_tokens: 100,
            block_tokens: 16,
            ..Default::default()
        };
        let (d, ticket) = pool.pick(&req, &NoPredictions, t0);
        assert!(matches!(d, Decision::Route(_)));
        let t = ticket.unwrap();
        assert_eq!(pool.addr(t.slot), "b:2", "the only ready endpoint");
        assert_eq!(pool.in_flight(1), 1);
        pool.finished(&t, false);
        assert_eq!(pool.in_flight(1), 0);
        let (d, _) = pool.pick(&req, &NoPredictions, t0 + Duration::from_secs(60));
        assert_eq!(d, Decision::NoEndpoint);
    }
}
