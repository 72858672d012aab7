//! The endpoint pool the server routes over: the endpoint set (a static list, or what
//! Kubernetes discovery last saw), the latest scrape of each endpoint, the requests dispatched
//! to each, the per-variant predictors, and the picker with its prefix index, all behind one
//! lock so that a pick sees one consistent snapshot.
//!
//! Data flow: [`parse_endpoints`] (or discovery) yields [`EndpointSpec`]s and
//! [`Pool::set_endpoints`] makes them the set: joiners get a slot (a freed one is reused, with
//! a new generation and a cold prefix cache), leavers stop being picked and scraped at once and
//! keep their slot only until their last request in flight finishes. The scraper fetches
//! [`Pool::scrape_targets`] and hands back [`Pool::scrape_result`]s; the ext_proc stream calls
//! [`Pool::pick`] / [`Pool::pick_predicted`] (which builds the views, asks the picker, records
//! the prompt's blocks and counts the request in flight), [`Pool::first_token`] and
//! [`Pool::finished`]. Tickets and scrape results carry the slot's generation, so they never
//! touch a later occupant of the same slot.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use goodput_predictor::{PodType, Predictor};

use crate::endpoint::{EndpointView, Health};
use crate::latency::LatencyModel;
use crate::pick::{Decision, PickRequest, Picker};
use crate::prefix::PrefixIndex;
use crate::server::scrape::Scraped;
use crate::server::variants::Variants;

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
    /// Distinguishes the endpoints that ever held this slot: a ticket or a scrape result of an
    /// earlier occupant never touches a later one.
    generation: u64,
    /// Left the endpoint set but still has requests in flight: not picked, not scraped, and
    /// its slot is released when the last request finishes.
    removed: bool,
    scraped: Scraped,
    last_ok: Option<Instant>,
    failures: u32,
    in_flight: u32,
    prefill_tokens_in_flight: u64,
    /// The requests whose prompt is prefilled here and that have not produced a first token, by
    /// dispatch instant (nanoseconds after the pool's epoch) and ticket number: the oldest says
    /// how long the prefill of the prompts in flight can have been running.
    awaiting_first_token: BTreeSet<(u64, u64)>,
    /// Requests routed here since it joined.
    dispatched: u64,
    /// When a response from here last streamed a token, written by the response streams
    /// without the pool's lock (see [`TokenClock`]).
    last_token: Arc<AtomicU64>,
}

impl Entry {
    fn new(spec: EndpointSpec, variant: usize, generation: u64) -> Self {
        Self {
            spec,
            variant,
            generation,
            removed: false,
            scraped: Scraped::default(),
            last_ok: None,
            failures: 0,
            in_flight: 0,
            prefill_tokens_in_flight: 0,
            awaiting_first_token: BTreeSet::new(),
            dispatched: 0,
            last_token: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// A dispatched request's bookkeeping, handed back on first token and finish.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub slot: usize,
    /// The generation of the slot's endpoint at dispatch.
    pub generation: u64,
    pub prefill_slot: Option<usize>,
    /// The generation of the prefill slot's endpoint at dispatch (0 without one).
    pub prefill_generation: u64,
    /// Prompt tokens the prefill computes, counted in flight on the endpoint that prefills
    /// (the prefill slot in P/D, else `slot`) until the first token.
    pub uncached_tokens: u64,
    /// When it was dispatched, nanoseconds after the pool's epoch.
    pub dispatched_ns: u64,
    /// Its number among the pool's tickets.
    pub seq: u64,
}

/// One endpoint to scrape: its slot, the generation of its occupant, and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    pub slot: usize,
    pub generation: u64,
    pub addr: String,
}

/// What [`Pool::set_endpoints`] changed, by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: Vec<String>,
    /// Left with nothing in flight: gone at once.
    pub removed: Vec<String>,
    /// Left with requests in flight: no longer picked; released when the last one ends.
    pub draining: Vec<String>,
    /// Kept, with new attributes (role, accelerator or tp).
    pub changed: Vec<String>,
    /// Not added, with the reason (e.g. an accelerator the catalog does not know).
    pub rejected: Vec<(String, String)>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.draining.is_empty()
            && self.changed.is_empty()
            && self.rejected.is_empty()
    }
}

/// What finishing a request left at its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The endpoint is still known, with this many requests in flight.
    InFlight { addr: String, in_flight: u32 },
    /// The endpoint had left the pool and this was its last request: its slot is free.
    Released { addr: String },
    /// The ticket's endpoint is no longer there (already released): nothing to do.
    Unknown,
}

/// Where a response stream marks the instants its endpoint streams tokens: the endpoint's
/// cell (nanoseconds after the pool's epoch, plus one; 0 is never) and that epoch. A mark is
/// one atomic max, so a stream never takes the pool's lock per chunk.
#[derive(Debug, Clone)]
pub struct TokenClock {
    epoch: Instant,
    cell: Arc<AtomicU64>,
}

impl TokenClock {
    /// A token streamed at `at`.
    pub fn mark(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        let v = u64::try_from(nanos)
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        self.cell.fetch_max(v, Ordering::Relaxed);
    }
}

/// Milliseconds from the instant in `cell` to `now`; None if nothing was marked.
fn ms_since(epoch: Instant, cell: &AtomicU64, now: Instant) -> Option<f64> {
    let v = cell.load(Ordering::Relaxed);
    if v == 0 {
        return None;
    }
    let at = epoch + Duration::from_nanos(v - 1);
    Some(now.saturating_duration_since(at).as_secs_f64() * 1e3)
}

/// The pool and the picker.
pub struct Pool {
    /// Indexed by slot; `None` is a free slot.
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    by_addr: HashMap<String, usize>,
    next_generation: u64,
    variants: Variants,
    picker: Box<dyn Picker>,
    prefix: PrefixIndex,
    views: Vec<EndpointView>,
    staleness: Staleness,
    /// The origin of the token clocks' instants.
    epoch: Instant,
    /// Tickets issued.
    tickets: u64,
}

impl Pool {
    /// An empty pool (endpoints come later through [`Pool::set_endpoints`]).
    pub fn new(variants: Variants, picker: Box<dyn Picker>, staleness: Staleness) -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            by_addr: HashMap::new(),
            next_generation: 0,
            variants,
            picker,
            prefix: PrefixIndex::default(),
            views: Vec::new(),
            staleness,
            epoch: Instant::now(),
            tickets: 0,
        }
    }

    /// A pool of a static list: slot `i` is `specs[i]`; any endpoint whose variant cannot be set
    /// up is an error.
    pub fn with_endpoints(
        specs: Vec<EndpointSpec>,
        variants: Variants,
        picker: Box<dyn Picker>,
        staleness: Staleness,
    ) -> Result<Self, SpecError> {
        let mut pool = Self::new(variants, picker, staleness);
        let applied = pool.set_endpoints(specs);
        if let Some((entry, message)) = applied.rejected.into_iter().next() {
            return Err(SpecError { entry, message });
        }
        Ok(pool)
    }

    /// Makes the pool's endpoint set `desired` (unique by address; later duplicates are
    /// rejected). Endpoints that left stop being picked and scraped at once; the ones with
    /// requests in flight keep their slot until the last request finishes, so a ticket never
    /// lands on another endpoint. A known address keeps its slot, counters and predictor
    /// (its attributes are updated in place when they changed).
    pub fn set_endpoints(&mut self, desired: Vec<EndpointSpec>) -> Applied {
        let mut applied = Applied::default();
        let mut wanted: HashSet<&str> = HashSet::with_capacity(desired.len());
        for s in &desired {
            if !wanted.insert(s.addr.as_str()) {
                applied
                    .rejected
                    .push((s.addr.clone(), "listed twice".into()));
            }
        }
        // Leavers first, so that their slots can be reused by the joiners.
        for slot in 0..self.entries.len() {
            let Some(e) = self.entries[slot].as_mut() else {
                continue;
            };
            if e.removed || wanted.contains(e.spec.addr.as_str()) {
                continue;
            }
            let addr = e.spec.addr.clone();
            if e.in_flight == 0 {
                self.release(slot);
                applied.removed.push(addr);
            } else {
                e.removed = true;
                self.prefix.forget(slot);
                applied.draining.push(addr);
            }
        }
        let mut seen: HashSet<&str> = HashSet::with_capacity(desired.len());
        for spec in &desired {
            if !seen.insert(spec.addr.as_str()) {
                continue;
            }
            match self.by_addr.get(&spec.addr).copied() {
                Some(slot) => self.update(slot, spec, &mut applied),
                None => match self.variants.variant_for(spec) {
                    Ok(variant) => {
                        self.insert(spec.clone(), variant);
                        applied.added.push(spec.addr.clone());
                    }
                    Err(e) => applied.rejected.push((spec.addr.clone(), e.to_string())),
                },
            }
        }
        applied
    }

    /// A desired endpoint that already has a slot: revive it if it was draining, and follow
    /// changed attributes.
    fn update(&mut self, slot: usize, spec: &EndpointSpec, applied: &mut Applied) {
        let variant = match self.entries[slot].as_ref() {
            Some(e) if e.spec != *spec => match self.variants.variant_for(spec) {
                Ok(v) => Some(v),
                Err(err) => {
                    applied.rejected.push((spec.addr.clone(), err.to_string()));
                    return;
                }
            },
            _ => None,
        };
        let Some(e) = self.entries[slot].as_mut() else {
            return;
        };
        if e.removed {
            // Back before its last request finished (e.g. ready again): a cold start as far
            // as we know, measured afresh before it is picked.
            e.removed = false;
            e.last_ok = None;
            e.failures = 0;
            applied.added.push(spec.addr.clone());
        }
        if let Some(v) = variant {
            e.spec = spec.clone();
            e.variant = v;
            applied.changed.push(spec.addr.clone());
        }
    }

    fn insert(&mut self, spec: EndpointSpec, variant: usize) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let addr = spec.addr.clone();
        let entry = Some(Entry::new(spec, variant, generation));
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot] = entry;
                slot
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        // A reused slot starts with a cold cache.
        self.prefix.forget(slot);
        self.by_addr.insert(addr, slot);
    }

    fn release(&mut self, slot: usize) {
        if let Some(e) = self.entries.get_mut(slot).and_then(Option::take) {
            self.by_addr.remove(&e.spec.addr);
            self.prefix.forget(slot);
            self.free.push(slot);
        }
    }

    fn active(&self, slot: usize) -> Option<&Entry> {
        self.entries
            .get(slot)
            .and_then(Option::as_ref)
            .filter(|e| !e.removed)
    }

    /// Slots ever used (active, draining or free): slot indices are below this.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no endpoint is in the set.
    pub fn is_empty(&self) -> bool {
        self.active_count() == 0
    }

    /// Endpoints in the set (not counting the draining ones).
    pub fn active_count(&self) -> usize {
        self.entries.iter().flatten().filter(|e| !e.removed).count()
    }

    /// Endpoints that left the set with requests still in flight.
    pub fn draining_count(&self) -> usize {
        self.entries.iter().flatten().filter(|e| e.removed).count()
    }

    /// (slot, address) of the endpoints in the set, by slot.
    pub fn endpoints(&self) -> Vec<(usize, String)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                e.as_ref()
                    .filter(|e| !e.removed)
                    .map(|e| (i, e.spec.addr.clone()))
            })
            .collect()
    }

    /// The slot of `addr`, if it is in the set or draining.
    pub fn slot_of(&self, addr: &str) -> Option<usize> {
        self.by_addr.get(addr).copied()
    }

    /// What the scraper should fetch now: the endpoints in the set.
    pub fn scrape_targets(&self) -> Vec<ScrapeTarget> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| {
                e.as_ref().filter(|e| !e.removed).map(|e| ScrapeTarget {
                    slot,
                    generation: e.generation,
                    addr: e.spec.addr.clone(),
                })
            })
            .collect()
    }

    /// The address of the endpoint in `slot` ("" for a free slot).
    pub fn addr(&self, slot: usize) -> &str {
        self.entries
            .get(slot)
            .and_then(Option::as_ref)
            .map_or("", |e| e.spec.addr.as_str())
    }

    pub fn variant(&self, slot: usize) -> usize {
        self.entries
            .get(slot)
            .and_then(Option::as_ref)
            .map_or(0, |e| e.variant)
    }

    /// The predictor of the variant of the endpoint in `slot`.
    pub fn predictor(&self, slot: usize) -> Option<Arc<Predictor>> {
        let e = self.entries.get(slot).and_then(Option::as_ref)?;
        self.variants.predictor(e.variant)
    }

    /// Variants known so far (one predictor each when predictions are on).
    pub fn variant_count(&self) -> usize {
        self.variants.len()
    }

    pub fn in_flight(&self, slot: usize) -> u32 {
        self.entries
            .get(slot)
            .and_then(Option::as_ref)
            .map_or(0, |e| e.in_flight)
    }

    /// Requests routed to the endpoint in `slot` since it joined.
    pub fn dispatched(&self, slot: usize) -> u64 {
        self.entries
            .get(slot)
            .and_then(Option::as_ref)
            .map_or(0, |e| e.dispatched)
    }

    /// A scrape of the endpoint in `slot` succeeded.
    pub fn scraped(&mut self, slot: usize, s: Scraped, at: Instant) {
        let down_after = self.staleness.down_after_failures;
        if let Some(e) = self.entries.get_mut(slot).and_then(Option::as_mut) {
            if e.last_ok.is_none() || e.failures >= down_after {
                // First sight, or back after being down (a restarted pod): its cache is cold.
                self.prefix.forget(slot);
            }
            e.scraped = s;
            e.last_ok = Some(at);
            e.failures = 0;
        }
    }

    pub fn scrape_failed(&mut self, slot: usize) {
        if let Some(e) = self.entries.get_mut(slot).and_then(Option::as_mut) {
            e.failures = e.failures.saturating_add(1);
        }
    }

    /// The result of scraping `target`, dropped when the slot changed hands meanwhile.
    pub fn scrape_result(&mut self, target: &ScrapeTarget, result: Option<Scraped>, at: Instant) {
        let current = self
            .active(target.slot)
            .is_some_and(|e| e.generation == target.generation);
        if !current {
            return;
        }
        match result {
            Some(s) => self.scraped(target.slot, s, at),
            None => self.scrape_failed(target.slot),
        }
    }

    /// Health of one endpoint at `now` (a draining or free slot is down).
    pub fn health(&self, slot: usize, now: Instant) -> Health {
        match self.active(slot) {
            Some(e) => self.entry_health(e, now),
            None => Health::Down,
        }
    }

    fn entry_health(&self, e: &Entry, now: Instant) -> Health {
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

    /// Endpoints in the set per health state: (ready, stale, down).
    pub fn health_counts(&self, now: Instant) -> (i64, i64, i64) {
        let mut c = (0, 0, 0);
        for e in self.entries.iter().flatten().filter(|e| !e.removed) {
            match self.entry_health(e, now) {
                Health::Ready => c.0 += 1,
                Health::Stale => c.1 += 1,
                Health::Down => c.2 += 1,
            }
        }
        c
    }

    /// Picks for `request` with `latency`'s predictions; on a route, records its blocks and
    /// counts it in flight.
    pub fn pick(
        &mut self,
        request: &PickRequest<'_>,
        latency: &dyn LatencyModel,
        now: Instant,
    ) -> (Decision, Option<Ticket>) {
        self.pick_inner(request, Some(latency), now)
    }

    /// [`Pool::pick`] with the pool's own per-variant predictors.
    pub fn pick_predicted(
        &mut self,
        request: &PickRequest<'_>,
        now: Instant,
    ) -> (Decision, Option<Ticket>) {
        self.pick_inner(request, None, now)
    }

    fn pick_inner(
        &mut self,
        request: &PickRequest<'_>,
        latency: Option<&dyn LatencyModel>,
        now: Instant,
    ) -> (Decision, Option<Ticket>) {
        let mut views = std::mem::take(&mut self.views);
        views.clear();
        for (slot, e) in self.entries.iter().enumerate() {
            let Some(e) = e.as_ref().filter(|e| !e.removed) else {
                continue;
            };
            views.push(EndpointView {
                slot,
                variant: e.variant,
                role: e.spec.role,
                health: self.entry_health(e, now),
                running: e.scraped.running,
                waiting: e.scraped.waiting,
                kv_usage: e.scraped.kv_usage,
                in_flight: e.in_flight,
                prefill_tokens_in_flight: e.prefill_tokens_in_flight,
                decode_tokens_in_flight: 0,
                ms_since_last_token: ms_since(self.epoch, &e.last_token, now),
                ms_since_oldest_prefill: e.awaiting_first_token.first().and_then(|&(ns, _)| {
                    let at = self.epoch.checked_add(Duration::from_nanos(ns))?;
                    Some(now.saturating_duration_since(at).as_secs_f64() * 1e3)
                }),
            });
        }
        let latency: &dyn LatencyModel = match latency {
            Some(l) => l,
            None => self.variants.latency(),
        };
        let d = self.picker.pick(request, &views, &self.prefix, latency);
        let ticket = match &d {
            Decision::Route(r) => {
                let slot = views[r.endpoint].slot;
                let prefill_slot = r.prefill.map(|p| views[p].slot);
                let cached = u64::from(r.matched_blocks) * u64::from(request.block_tokens);
                // vLLM computes at least a prompt's last token, however much of it is cached.
                let uncached = u64::from(request.prompt_tokens)
                    .saturating_sub(cached)
                    .max(u64::from(request.prompt_tokens > 0));
                self.prefix.record(slot, request.hashes);
                if let Some(p) = prefill_slot {
                    self.prefix.record(p, request.hashes);
                }
                let dispatched_ns =
                    u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
                        .unwrap_or(u64::MAX);
                let seq = self.tickets;
                self.tickets = self.tickets.wrapping_add(1);
                let mut generation = 0;
                if let Some(e) = self.entries.get_mut(slot).and_then(Option::as_mut) {
                    e.in_flight += 1;
                    e.dispatched += 1;
                    generation = e.generation;
                }
                // The prompt's prefill runs on the prefill endpoint when there is one.
                let mut prefill_generation = 0;
                if let Some(e) = self
                    .entries
                    .get_mut(prefill_slot.unwrap_or(slot))
                    .and_then(Option::as_mut)
                {
                    e.prefill_tokens_in_flight += uncached;
                    e.awaiting_first_token.insert((dispatched_ns, seq));
                    prefill_generation = e.generation;
                }
                Some(Ticket {
                    slot,
                    generation,
                    prefill_slot,
                    prefill_generation,
                    uncached_tokens: uncached,
                    dispatched_ns,
                    seq,
                })
            }
            _ => None,
        };
        self.views = views;
        (d, ticket)
    }

    /// The ticket's endpoint, if it is still the one the ticket was issued for.
    fn ticket_entry(&mut self, t: &Ticket) -> Option<&mut Entry> {
        self.entries
            .get_mut(t.slot)
            .and_then(Option::as_mut)
            .filter(|e| e.generation == t.generation)
    }

    /// The clock a response stream of the ticket's endpoint marks its tokens on (None if the
    /// endpoint is no longer the one the ticket was issued for).
    pub fn token_clock(&mut self, t: &Ticket) -> Option<TokenClock> {
        let epoch = self.epoch;
        self.ticket_entry(t).map(|e| TokenClock {
            epoch,
            cell: Arc::clone(&e.last_token),
        })
    }

    /// The request's first token arrived: its prompt is no longer queued for prefill. A second
    /// report for the same ticket changes nothing.
    pub fn first_token(&mut self, t: &Ticket) {
        let (slot, generation) = match t.prefill_slot {
            Some(p) => (p, t.prefill_generation),
            None => (t.slot, t.generation),
        };
        if let Some(e) = self
            .entries
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|e| e.generation == generation)
            && e.awaiting_first_token.remove(&(t.dispatched_ns, t.seq))
        {
            e.prefill_tokens_in_flight =
                e.prefill_tokens_in_flight.saturating_sub(t.uncached_tokens);
        }
    }

    /// The request ended (completed, failed or cancelled). `had_first_token` says whether
    /// [`Pool::first_token`] was already called for it. The last request of an endpoint that
    /// left the set releases its slot.
    pub fn finished(&mut self, t: &Ticket, had_first_token: bool) -> Finished {
        if !had_first_token {
            self.first_token(t);
        }
        let Some(e) = self.ticket_entry(t) else {
            return Finished::Unknown;
        };
        e.in_flight = e.in_flight.saturating_sub(1);
        let addr = e.spec.addr.clone();
        if e.removed && e.in_flight == 0 {
            self.release(t.slot);
            return Finished::Released { addr };
        }
        Finished::InFlight {
            addr,
            in_flight: e.in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_clock_gives_the_time_since_the_latest_mark() {
        let epoch = Instant::now();
        let clock = TokenClock {
            epoch,
            cell: Arc::new(AtomicU64::new(0)),
        };
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        assert_eq!(
            ms_since(epoch, &clock.cell, at(10)),
            None,
            "nothing streamed yet"
        );
        clock.mark(at(5));
        // A stream marking an earlier instant late (another request's chunk) does not move it
        // back.
        clock.mark(at(3));
        let since = ms_since(epoch, &clock.cell, at(12)).unwrap();
        assert!((since - 7.0).abs() < 1e-6, "{since}");
        clock.mark(at(12));
        assert_eq!(ms_since(epoch, &clock.cell, at(12)), Some(0.0));
        // A mark at the epoch itself is still a mark.
        let fresh = TokenClock {
            epoch,
            cell: Arc::new(AtomicU64::new(0)),
        };
        fresh.mark(epoch);
        assert_eq!(ms_since(epoch, &fresh.cell, at(1)), Some(1.0));
    }
    use crate::latency::NoPredictions;
    use crate::pick::{Decision, RoundRobin};
    use proptest::prelude::*;

    const ST: Staleness = Staleness {
        stale_after: Duration::from_secs(1),
        down_after: Duration::from_secs(10),
        down_after_failures: 3,
    };

    fn specs(addrs: &[&str]) -> Vec<EndpointSpec> {
        addrs
            .iter()
            .map(|a| EndpointSpec {
                addr: (*a).into(),
                role: PodType::Monolithic,
                accelerator: None,
                tp: 1,
            })
            .collect()
    }

    fn empty_pool() -> Pool {
        Pool::new(
            Variants::without_predictions(),
            Box::new(RoundRobin::default()),
            ST,
        )
    }

    fn req() -> PickRequest<'static> {
        PickRequest {
            prompt_tokens: 100,
            block_tokens: 16,
            ..Default::default()
        }
    }

    fn scrape_all(pool: &mut Pool, at: Instant) {
        for t in pool.scrape_targets() {
            pool.scrape_result(&t, Some(Scraped::default()), at);
        }
    }

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
        let mut pool = Pool::with_endpoints(
            specs,
            Variants::without_predictions(),
            Box::new(RoundRobin::default()),
            st,
        )
        .unwrap();
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

    #[test]
    fn the_oldest_prompt_awaiting_its_first_token_is_timed_from_its_dispatch() {
        let mut pool = empty_pool();
        let t0 = Instant::now();
        pool.set_endpoints(specs(&["a:1"]));
        scrape_all(&mut pool, t0);
        let ms = |d: u64| t0 + Duration::from_millis(d);
        // The view a pick saw (left in the pool's scratch vector).
        let seen = |pool: &Pool| pool.views[0].ms_since_oldest_prefill;
        let (_, first) = pool.pick(&req(), &NoPredictions, t0);
        assert_eq!(seen(&pool), None, "nothing in flight yet");
        let (_, second) = pool.pick(&req(), &NoPredictions, ms(50));
        let close = |x: Option<f64>, want: f64| x.is_some_and(|x| (x - want).abs() < 1e-6);
        assert!(close(seen(&pool), 50.0), "{:?}", seen(&pool));
        // Its first token: the second request is now the oldest.
        pool.first_token(&first.unwrap());
        pool.pick(&req(), &NoPredictions, ms(80));
        assert!(close(seen(&pool), 30.0), "{:?}", seen(&pool));
        // A request that ends without a first token leaves the count too.
        let second = second.unwrap();
        pool.finished(&second, false);
        pool.pick(&req(), &NoPredictions, ms(100));
        assert!(
            close(seen(&pool), 20.0),
            "the third, dispatched at 80 ms: {:?}",
            seen(&pool)
        );
    }

    #[test]
    fn leavers_drain_their_requests_and_joiners_reuse_free_slots() {
        let mut pool = empty_pool();
        let t0 = Instant::now();
        let a = pool.set_endpoints(specs(&["a:1", "b:1"]));
        assert_eq!(a.added, vec!["a:1", "b:1"]);
        scrape_all(&mut pool, t0);
        // One request to each.
        let (_, t1) = pool.pick(&req(), &NoPredictions, t0);
        let (_, t2) = pool.pick(&req(), &NoPredictions, t0);
        let (t1, t2) = (t1.unwrap(), t2.unwrap());
        assert_ne!(t1.slot, t2.slot);
        let a_slot = pool.slot_of("a:1").unwrap();
        let (ta, tb) = if t1.slot == a_slot {
            (t1, t2)
        } else {
            (t2, t1)
        };

        // a leaves with a request in flight: not picked, not scraped, slot kept.
        let ch = pool.set_endpoints(specs(&["b:1"]));
        assert_eq!(ch.draining, vec!["a:1"]);
        assert_eq!(pool.active_count(), 1);
        assert_eq!(pool.draining_count(), 1);
        assert!(pool.scrape_targets().iter().all(|t| t.addr == "b:1"));
        for _ in 0..4 {
            let (_, t) = pool.pick(&req(), &NoPredictions, t0);
            let t = t.unwrap();
            assert_eq!(pool.addr(t.slot), "b:1");
            pool.finished(&t, false);
        }
        // c joins while a drains: a's slot is not handed out.
        pool.set_endpoints(specs(&["b:1", "c:1"]));
        let c_slot = pool.slot_of("c:1").unwrap();
        assert_ne!(c_slot, a_slot);
        // a's request ends: its slot is released, nobody else's count moves.
        assert_eq!(
            pool.finished(&ta, true),
            Finished::Released { addr: "a:1".into() }
        );
        assert_eq!(pool.slot_of("a:1"), None);
        assert_eq!(pool.in_flight(c_slot), 0);
        assert_eq!(pool.in_flight(tb.slot), 1);
        // d reuses a's slot with a new generation: a's old ticket cannot touch it.
        pool.set_endpoints(specs(&["b:1", "c:1", "d:1"]));
        assert_eq!(pool.slot_of("d:1"), Some(a_slot));
        scrape_all(&mut pool, t0);
        let mut td = None;
        for _ in 0..3 {
            let (_, t) = pool.pick(&req(), &NoPredictions, t0);
            let t = t.unwrap();
            if t.slot == a_slot {
                td = Some(t);
            } else {
                pool.finished(&t, false);
            }
        }
        let td = td.expect("d gets picks");
        assert_eq!(pool.in_flight(a_slot), 1);
        assert_eq!(pool.finished(&ta, false), Finished::Unknown);
        assert_eq!(
            pool.in_flight(a_slot),
            1,
            "a stale ticket does not count down d"
        );
        assert!(matches!(
            pool.finished(&td, false),
            Finished::InFlight { in_flight: 0, .. }
        ));
        // Leaving with nothing in flight frees at once.
        let mut ch = pool.set_endpoints(specs(&["b:1"]));
        ch.removed.sort();
        assert_eq!(ch.removed, vec!["c:1", "d:1"]);
        assert_eq!(
            pool.finished(&tb, false),
            Finished::InFlight {
                addr: "b:1".into(),
                in_flight: 0
            }
        );
    }

    #[test]
    fn a_draining_endpoint_that_returns_keeps_its_requests() {
        let mut pool = empty_pool();
        let t0 = Instant::now();
        pool.set_endpoints(specs(&["a:1"]));
        scrape_all(&mut pool, t0);
        let (_, t) = pool.pick(&req(), &NoPredictions, t0);
        let t = t.unwrap();
        pool.set_endpoints(Vec::new());
        assert_eq!(pool.health(t.slot, t0), Health::Down);
        let ch = pool.set_endpoints(specs(&["a:1"]));
        assert_eq!(ch.added, vec!["a:1"]);
        assert_eq!(pool.slot_of("a:1"), Some(t.slot));
        assert_eq!(
            pool.health(t.slot, t0),
            Health::Down,
            "measured afresh first"
        );
        assert_eq!(pool.in_flight(t.slot), 1);
        assert_eq!(
            pool.finished(&t, false),
            Finished::InFlight {
                addr: "a:1".into(),
                in_flight: 0
            }
        );
    }

    #[test]
    fn scrape_results_of_an_earlier_occupant_are_dropped() {
        let mut pool = empty_pool();
        let t0 = Instant::now();
        pool.set_endpoints(specs(&["a:1"]));
        let old = pool.scrape_targets();
        pool.set_endpoints(specs(&["b:1"]));
        assert_eq!(pool.slot_of("b:1"), Some(old[0].slot));
        pool.scrape_result(&old[0], Some(Scraped::default()), t0);
        assert_eq!(pool.health(old[0].slot, t0), Health::Down);
    }

    #[test]
    fn changed_attributes_move_the_endpoint_to_its_new_variant() {
        let mut pool = empty_pool();
        pool.set_endpoints(specs(&["a:1"]));
        let mut s = specs(&["a:1"]);
        s[0].role = PodType::Prefill;
        let ch = pool.set_endpoints(s);
        assert_eq!(ch.changed, vec!["a:1"]);
        assert_eq!(pool.variant(0), 1);
        assert_eq!(pool.variant_count(), 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(Vec<bool>),
        Pick,
        FirstToken(usize),
        Finish(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(any::<bool>(), 6).prop_map(Op::Set),
            Just(Op::Pick),
            (0usize..64).prop_map(Op::FirstToken),
            (0usize..64).prop_map(Op::Finish),
        ]
    }

    proptest! {
        /// Whatever the order of set changes, picks, first tokens (reported more than once too)
        /// and finishes: every pick goes to an endpoint in the set, each endpoint's in-flight
        /// count equals its open tickets, its prompts awaiting a first token (count and tokens)
        /// those of its open tickets without one, though every pick happens at the same
        /// instant, and once every ticket is finished only the set's endpoints hold slots.
        #[test]
        fn in_flight_counts_follow_tickets_across_set_changes(ops in prop::collection::vec(op(), 1..80)) {
            let names = ["a:1", "b:1", "c:1", "d:1", "e:1", "f:1"];
            let mut pool = empty_pool();
            let t0 = Instant::now();
            let mut open: Vec<(Ticket, String, bool)> = Vec::new();
            let mut set: Vec<&str> = Vec::new();
            for op in ops {
                match op {
                    Op::Set(mask) => {
                        set = names.iter().zip(&mask).filter(|(_, m)| **m).map(|(n, _)| *n).collect();
                        pool.set_endpoints(specs(&set));
                        scrape_all(&mut pool, t0);
                    }
                    Op::Pick => {
                        if let (_, Some(t)) = pool.pick(&req(), &NoPredictions, t0) {
                            let addr = pool.addr(t.slot).to_string();
                            prop_assert!(set.contains(&addr.as_str()), "{addr} not in {set:?}");
                            open.push((t, addr, false));
                        }
                    }
                    Op::FirstToken(i) => {
                        if !open.is_empty() {
                            let n = open.len();
                            let (t, _, seen) = &mut open[i % n];
                            pool.first_token(t);
                            *seen = true;
                        }
                    }
                    Op::Finish(i) => {
                        if !open.is_empty() {
                            let (t, addr, seen) = open.remove(i % open.len());
                            match pool.finished(&t, seen) {
                                Finished::InFlight { addr: a, .. } | Finished::Released { addr: a } => {
                                    prop_assert_eq!(a, addr);
                                }
                                Finished::Unknown => prop_assert!(false, "ticket of {} lost", addr),
                            }
                        }
                    }
                }
                for slot in 0..pool.len() {
                    let addr = pool.addr(slot);
                    if addr.is_empty() {
                        continue;
                    }
                    let n = open.iter().filter(|(_, a, _)| a == addr).count();
                    prop_assert_eq!(pool.in_flight(slot) as usize, n, "{}", addr);
                    let awaiting: Vec<&Ticket> = open
                        .iter()
                        .filter(|(_, a, seen)| a == addr && !seen)
                        .map(|(t, _, _)| t)
                        .collect();
                    let e = pool.entries[slot].as_ref().unwrap();
                    prop_assert_eq!(e.awaiting_first_token.len(), awaiting.len(), "{}", addr);
                    prop_assert_eq!(
                        e.prefill_tokens_in_flight,
                        awaiting.iter().map(|t| t.uncached_tokens).sum::<u64>(),
                        "{}",
                        addr
                    );
                }
            }
            for (t, _, seen) in open.drain(..) {
                pool.finished(&t, seen);
            }
            let mut held: Vec<String> = pool.endpoints().into_iter().map(|(_, a)| a).collect();
            held.sort();
            prop_assert_eq!(held, set.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            prop_assert_eq!(pool.draining_count(), 0);
        }
    }
}
