#!/usr/bin/env python3
"""Builds goodput's Grafana dashboards (dashboards/*.json) from the panel lists below.

The JSON files are what users import and what the Helm chart ships; this script is their source,
so that every panel follows the same conventions:
  - the data source is the template variable `${datasource}` (type prometheus);
  - selectors use the template variables (`namespace`, `model`, ...) with `=~` and an All value
    of `.*`, so a fresh install shows everything;
  - rates use `$__rate_interval`;
  - every panel has at least one target, and ids are unique within a dashboard.
scripts/check-deploy.sh rebuilds them into a temp directory and fails if the committed files
differ (run `python3 dashboards/build.py` after editing), then checks those conventions.

Metric names are the contract in docs/reference/metrics.md: vLLM's `vllm:*`, the controller's and
advise's `goodput_*`, the scheduler's `goodput_scheduler_*`, the predictor's `goodput_predictor_*`.
"""

import json
import sys
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39

# vLLM's histogram bucket bounds (reference/vllm-metrics.md §2): an SLO threshold on a histogram
# can only be judged at one of them.
TTFT_BUCKETS = ["0.1", "0.25", "0.5", "0.75", "1.0", "2.5", "5.0", "7.5", "10.0"]
TPOT_BUCKETS = ["0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3", "0.4", "0.5"]


def datasource_var():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def query_var(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        # The plain-string form: every Grafana version reads it (newer ones migrate it).
        "query": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def custom_var(name, label, values, default, description):
    return {
        "name": name,
        "label": label,
        "description": description,
        "type": "custom",
        "query": ",".join(values),
        "current": {"selected": True, "text": default, "value": default},
        "options": [
            {"selected": v == default, "text": v, "value": v} for v in values
        ],
        "includeAll": False,
        "multi": False,
        "hide": 0,
    }


class Board:
    def __init__(self, uid, title, description, tags, variables):
        self.uid, self.title, self.description = uid, title, description
        self.tags, self.variables = tags, variables
        self.panels, self.x, self.y, self.row_h = [], 0, 0, 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def _targets(self, queries):
        return [
            {
                "datasource": DS,
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
                "range": True,
                "editorMode": "code",
            }
            for i, (expr, legend) in enumerate(queries)
        ]

    def timeseries(self, title, description, queries, unit="short", w=12, h=8, stack=False,
                   min_zero=True):
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                  "spanNulls": False}
        if stack:
            custom["stacking"] = {"mode": "normal", "group": "A"}
        defaults = {"unit": unit, "custom": custom}
        if min_zero:
            defaults["min"] = 0
        self.panels.append({
            "id": len(self.panels) + 1,
            "type": "timeseries",
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": self._targets(queries),
        })

    def stat(self, title, description, queries, unit="short", w=6, h=4, thresholds=None,
             decimals=None):
        steps = thresholds or [{"color": "green", "value": None}]
        defaults = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}
        if decimals is not None:
            defaults["decimals"] = decimals
        self.panels.append({
            "id": len(self.panels) + 1,
            "type": "stat",
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"},
            "targets": self._targets(queries),
        })

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["goodput"] + self.tags,
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-3h", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "weekStart": "",
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts", "type": "dashboard"}]},
            "links": [{"asDropdown": True, "includeVars": True, "keepTime": True,
                       "tags": ["goodput"], "title": "goodput", "type": "dashboards"}],
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


# Selectors, with the template variables of each dashboard.
G = 'namespace=~"$namespace", model=~"$model"'          # goodput_* (controller, advise)
GV = G + ', variant=~"$variant"'
V = 'namespace=~"$namespace", model_name=~"$model"'     # vllm:* (model_name is vLLM's label)
VP = V + ', pod=~"$pod"'
RI = "$__rate_interval"


def autoscaling():
    b = Board(
        "goodput-autoscaling", "goodput / Autoscaling overview",
        "What goodput's controller (or `goodput autoscaler advise`) decided and why: desired vs "
        "current replicas per variant against the load, forecast vs actual load, cost, SLO "
        "attainment measured from vLLM's histograms, and the controller's health.",
        ["autoscaling"],
        [datasource_var(),
         query_var("namespace", "Namespace", "label_values(goodput_desired_replicas, namespace)"),
         query_var("model", "Model",
                   'label_values(goodput_desired_replicas{namespace=~"$namespace"}, model)'),
         query_var("variant", "Variant",
                   'label_values(goodput_desired_replicas{namespace=~"$namespace", '
                   'model=~"$model"}, variant)'),
         custom_var("ttft_le", "TTFT threshold (s)", TTFT_BUCKETS, "1.0",
                    "A request meets its TTFT objective at or below this vLLM bucket bound"),
         custom_var("tpot_le", "TPOT threshold (s)", TPOT_BUCKETS, "0.1",
                    "A request meets its ITL objective when its mean time per output token is "
                    "at or below this vLLM bucket bound")],
    )
    b.stat("Desired replicas", "Sum of desired replicas over the selected variants.",
           [(f"sum(goodput_desired_replicas{{{GV}}})", "desired")])
    b.stat("Current replicas", "Sum of current (ready) replicas over the selected variants.",
           [(f"sum(goodput_current_replicas{{{GV}}})", "current")])
    b.stat("Cost per hour", "Accelerator cost of the current replicas, USD per hour.",
           [(f"sum(goodput_cost_per_hour{{{G}}})", "USD/h")], unit="currencyUSD", decimals=2)
    b.stat("SLO attainment (TTFT and TPOT)",
           "Share of requests over the dashboard range that met the TTFT threshold, times the "
           "share that met the TPOT threshold (vLLM histograms; thresholds are template "
           "variables).",
           [(f"(sum(increase(vllm:time_to_first_token_seconds_bucket{{{V}, le=\"$ttft_le\"}}[$__range]))"
             f" / sum(increase(vllm:time_to_first_token_seconds_count{{{V}}}[$__range])))"
             f" * (sum(increase(vllm:request_time_per_output_token_seconds_bucket{{{V}, le=\"$tpot_le\"}}[$__range]))"
             f" / sum(increase(vllm:request_time_per_output_token_seconds_count{{{V}}}[$__range])))",
             "attainment")],
           unit="percentunit", decimals=1,
           thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 0.9},
                       {"color": "green", "value": 0.95}])
    b.timeseries("Desired vs current replicas per variant",
                 "Replicas goodput wants (desired) and has (current), per variant.",
                 [(f"sum by (variant) (goodput_desired_replicas{{{GV}}})", "{{variant}} desired"),
                  (f"sum by (variant) (goodput_current_replicas{{{GV}}})", "{{variant}} current")],
                 w=12)
    b.timeseries("Load: seen, forecast and served",
                 "Arrival rate goodput saw and forecast (req/s), against the rate vLLM finished.",
                 [(f"sum by (model) (goodput_arrival_rate{{{G}}})", "{{model}} seen"),
                  (f"sum by (model) (goodput_forecast_arrival_rate{{{G}}})", "{{model}} forecast"),
                  (f"sum by (model_name) (rate(vllm:request_success_total{{{V}}}[{RI}]))",
                   "{{model_name}} served")],
                 unit="reqps", w=12)
    b.timeseries("Forecast error",
                 "Forecast minus seen arrival rate, relative to the seen rate.",
                 [(f"(sum by (model) (goodput_forecast_arrival_rate{{{G}}}) - sum by (model) "
                   f"(goodput_arrival_rate{{{G}}})) / sum by (model) (goodput_arrival_rate{{{G}}})",
                   "{{model}}")],
                 unit="percentunit", w=8, min_zero=False)
    b.timeseries("Cost per hour", "Accelerator cost per model, USD per hour.",
                 [(f"sum by (model) (goodput_cost_per_hour{{{G}}})", "{{model}}")],
                 unit="currencyUSD", w=8)
    b.timeseries("SLO attainment per model",
                 "Share of requests meeting the TTFT and TPOT thresholds (template variables).",
                 [(f"sum by (model_name) (rate(vllm:time_to_first_token_seconds_bucket{{{V}, le=\"$ttft_le\"}}[{RI}]))"
                   f" / sum by (model_name) (rate(vllm:time_to_first_token_seconds_count{{{V}}}[{RI}]))",
                   "{{model_name}} TTFT"),
                  (f"sum by (model_name) (rate(vllm:request_time_per_output_token_seconds_bucket{{{V}, le=\"$tpot_le\"}}[{RI}]))"
                   f" / sum by (model_name) (rate(vllm:request_time_per_output_token_seconds_count{{{V}}}[{RI}]))",
                   "{{model_name}} TPOT")],
                 unit="percentunit", w=8)
    b.timeseries("Predicted vs observed p95 TTFT",
                 "goodput's predicted TTFT per variant at its desired replicas, the observed "
                 "p95 from vLLM, and the target.",
                 [(f"max by (variant) (goodput_predicted_ttft_seconds{{{GV}}})", "{{variant}} predicted"),
                  (f"histogram_quantile(0.95, sum by (model_name, le) (rate(vllm:time_to_first_token_seconds_bucket{{{V}}}[{RI}])))",
                   "{{model_name}} observed p95"),
                  (f"max by (model) (goodput_slo_ttft_seconds{{{G}}})", "{{model}} target")],
                 unit="s", w=12)
    b.timeseries("Predicted vs observed p95 ITL",
                 "goodput's predicted inter-token latency per variant, the observed p95 of the "
                 "per-request mean time per output token, and the target.",
                 [(f"max by (variant) (goodput_predicted_itl_seconds{{{GV}}})", "{{variant}} predicted"),
                  (f"histogram_quantile(0.95, sum by (model_name, le) (rate(vllm:request_time_per_output_token_seconds_bucket{{{V}}}[{RI}])))",
                   "{{model_name}} observed p95"),
                  (f"max by (model) (goodput_slo_itl_seconds{{{G}}})", "{{model}} target")],
                 unit="s", w=12)
    b.timeseries("Scaling decisions",
                 "Decisions per minute by direction (up, down, hold).",
                 [(f"sum by (direction) (rate(goodput_decisions_total{{{G}}}[{RI}])) * 60",
                   "{{direction}}")],
                 unit="short", w=8)
    b.timeseries("Metrics available / capacity limited",
                 "1 when the controller has fresh metrics for the model; 1 when the pools cannot "
                 "hold the replicas the SLOs need.",
                 [(f"max by (model) (goodput_metrics_available{{{G}}})", "{{model}} metrics available"),
                  (f"max by (model) (goodput_capacity_limited{{{G}}})", "{{model}} capacity limited")],
                 w=8)
    b.timeseries("Accelerator pools",
                 "Devices used by goodput's variants against each AcceleratorPool's capacity.",
                 [("sum by (pool) (goodput_pool_devices_used)", "{{pool}} used"),
                  ("sum by (pool) (goodput_pool_devices_capacity)", "{{pool}} capacity")],
                 w=8)
    b.timeseries("Reconcile errors", "Errors per minute by reason.",
                 [(f"sum by (reason) (rate(goodput_reconcile_errors_total[{RI}])) * 60", "{{reason}}")],
                 w=12)
    b.timeseries("Reconcile duration",
                 "p50 and p99 of one reconcile (queries, optimiser, actuation).",
                 [(f"histogram_quantile(0.5, sum by (le) (rate(goodput_reconcile_duration_seconds_bucket[{RI}])))", "p50"),
                  (f"histogram_quantile(0.99, sum by (le) (rate(goodput_reconcile_duration_seconds_bucket[{RI}])))", "p99")],
                 unit="s", w=12)
    return b


def predictor():
    P = 'instance=~"$instance"'
    b = Board(
        "goodput-predictor", "goodput / Latency predictor",
        "How well goodput's latency predictor does: predicted vs observed TTFT/TPOT (scheduler), "
        "held-out error and quantile coverage, training window and retrainings.",
        ["predictor"],
        [datasource_var(),
         query_var("instance", "Predictor", "label_values(goodput_predictor_model_version, instance)"),
         query_var("namespace", "Namespace",
                   "label_values(goodput_scheduler_predicted_ttft_seconds_count, namespace)"),
         query_var("model", "Model", "label_values(goodput_predicted_ttft_seconds, model)"),
         query_var("variant", "Variant",
                   'label_values(goodput_predicted_ttft_seconds{model=~"$model"}, variant)')],
    )
    b.stat("Model version", "Version of the models in use (0: none fitted yet).",
           [(f"max(goodput_predictor_model_version{{{P}}})", "version")])
    b.stat("TTFT MAPE", "Held-out mean absolute percentage error of the TTFT point prediction.",
           [(f"max(goodput_predictor_mape_percent{{{P}, target=\"ttft\"}})", "ttft")],
           unit="percent", decimals=1,
           thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 15},
                       {"color": "red", "value": 25}])
    b.stat("TPOT MAPE", "Held-out mean absolute percentage error of the TPOT point prediction.",
           [(f"max(goodput_predictor_mape_percent{{{P}, target=\"tpot\"}})", "tpot")],
           unit="percent", decimals=1,
           thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 15},
                       {"color": "red", "value": 25}])
    b.stat("p90 coverage (TTFT)",
           "Held-out share of requests at or below the predicted 90th percentile (ideal 0.9).",
           [(f"min(goodput_predictor_coverage_ratio{{{P}, target=\"ttft\", quantile=\"0.9\"}})", "p90")],
           unit="percentunit", decimals=1,
           thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 0.8}])
    b.timeseries("Scheduler: predicted vs observed TTFT",
                 "Median and p90 of the TTFT the scheduler predicted at pick time and of the TTFT "
                 "then observed.",
                 [(f"histogram_quantile(0.5, sum by (le) (rate(goodput_scheduler_predicted_ttft_seconds_bucket{{namespace=~\"$namespace\"}}[{RI}])))", "predicted p50"),
                  (f"histogram_quantile(0.5, sum by (le) (rate(goodput_scheduler_observed_ttft_seconds_bucket{{namespace=~\"$namespace\"}}[{RI}])))", "observed p50"),
                  (f"histogram_quantile(0.9, sum by (le) (rate(goodput_scheduler_predicted_ttft_seconds_bucket{{namespace=~\"$namespace\"}}[{RI}])))", "predicted p90"),
                  (f"histogram_quantile(0.9, sum by (le) (rate(goodput_scheduler_observed_ttft_seconds_bucket{{namespace=~\"$namespace\"}}[{RI}])))", "observed p90")],
                 unit="s", w=12)
    b.timeseries("Scheduler: predicted vs observed TPOT",
                 "Median and p90 of predicted and observed time per output token.",
                 [(f"histogram_quantile(0.5, sum by (le) (rate(goodput_scheduler_predicted_tpot_seconds_bucket{{namespace=~\"$namespace\"}}[{RI}])))", "predicted p50"),
                  (f"histogram_quantile(0.5, sum by (le) (rate(goodput_scheduler_observed_tpot_seconds_bucket{{namespace=~\"$namespace\"}}[{RI}])))", "observed p50"),
                  (f"histogram_quantile(0.9, sum by (le) (rate(goodput_scheduler_predicted_tpot_seconds_bucket{{namespace=~\"$namespace\"}}[{RI}])))", "predicted p90"),
                  (f"histogram_quantile(0.9, sum by (le) (rate(goodput_scheduler_observed_tpot_seconds_bucket{{namespace=~\"$namespace\"}}[{RI}])))", "observed p90")],
                 unit="s", w=12)
    b.timeseries("Autoscaler: predicted vs observed p95 TTFT per variant",
                 "The controller's predicted TTFT (its capacity model) against vLLM's p95.",
                 [('max by (variant) (goodput_predicted_ttft_seconds{model=~"$model", variant=~"$variant"})',
                   "{{variant}} predicted"),
                  (f"histogram_quantile(0.95, sum by (model_name, le) (rate(vllm:time_to_first_token_seconds_bucket{{model_name=~\"$model\"}}[{RI}])))",
                   "{{model_name}} observed p95")],
                 unit="s", w=24)
    b.timeseries("Held-out error (MAPE)", "Mean absolute percentage error by target.",
                 [(f"max by (target) (goodput_predictor_mape_percent{{{P}}})", "{{target}}")],
                 unit="percent", w=8)
    b.timeseries("Quantile coverage",
                 "Held-out share of requests at or below each predicted quantile (ideal: the "
                 "quantile itself).",
                 [(f"max by (target, quantile) (goodput_predictor_coverage_ratio{{{P}}})",
                   "{{target}} p{{quantile}}")],
                 unit="percentunit", w=8)
    b.timeseries("Pinball loss", "Held-out pinball loss per target and quantile, ms.",
                 [(f"max by (target, quantile) (goodput_predictor_pinball_loss_ms{{{P}}})",
                   "{{target}} q{{quantile}}")],
                 unit="ms", w=8)
    b.timeseries("Training samples", "Training rows received per second.",
                 [(f"sum(rate(goodput_predictor_samples_total{{{P}}}[{RI}]))", "samples/s"),
                  (f"sum(rate(goodput_scheduler_training_samples_total{{namespace=~\"$namespace\"}}[{RI}]))",
                   "sent by scheduler/s")],
                 w=8)
    b.timeseries("Training window", "Rows in the stratified training window per target.",
                 [(f"max by (target) (goodput_predictor_window_rows{{{P}}})", "{{target}}")], w=8)
    b.timeseries("Retrainings", "Retrainings per hour by reason (schedule, drift, manual).",
                 [(f"sum by (reason) (increase(goodput_predictor_retrains_total{{{P}}}[1h]))", "{{reason}}")],
                 w=8)
    b.timeseries("HTTP requests", "Predictor API requests per second by endpoint and status class.",
                 [(f"sum by (endpoint, class) (rate(goodput_predictor_http_requests_total{{{P}}}[{RI}]))",
                   "{{endpoint}} {{class}}")],
                 unit="reqps", w=12)
    b.timeseries("Rows predicted", "Endpoints predicted per second over HTTP (bulk calls count each row).",
                 [(f"sum(rate(goodput_predictor_rows_predicted_total{{{P}}}[{RI}]))", "rows/s")],
                 w=12)
    return b


def scheduler():
    S = 'namespace=~"$namespace", instance=~"$instance"'
    b = Board(
        "goodput-scheduler", "goodput / Scheduler",
        "The endpoint picker behind Envoy: picks by outcome, pick latency, TTFT headroom against "
        "the request's SLO, endpoints and their load.",
        ["scheduler"],
        [datasource_var(),
         query_var("namespace", "Namespace", "label_values(goodput_scheduler_picks_total, namespace)"),
         query_var("instance", "Scheduler",
                   'label_values(goodput_scheduler_picks_total{namespace=~"$namespace"}, instance)')],
    )
    b.stat("Picks per second", "All picks, any outcome.",
           [(f"sum(rate(goodput_scheduler_picks_total{{{S}}}[{RI}]))", "picks/s")], unit="reqps")
    b.stat("Scored share", "Share of picks made with latency predictions (not fallback).",
           [(f"sum(rate(goodput_scheduler_picks_total{{{S}, outcome=\"scored\"}}[{RI}])) / "
             f"sum(rate(goodput_scheduler_picks_total{{{S}}}[{RI}]))", "scored")],
           unit="percentunit", decimals=1,
           thresholds=[{"color": "orange", "value": None}, {"color": "green", "value": 0.5}])
    b.stat("Ready endpoints", "Endpoints the scheduler can pick now.",
           [(f"sum(goodput_scheduler_endpoints{{{S}, state=\"ready\"}})", "ready")],
           thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}])
    b.stat("p99 pick latency", "99th percentile of one pick (scoring every endpoint).",
           [(f"histogram_quantile(0.99, sum by (le) (rate(goodput_scheduler_pick_duration_seconds_bucket{{{S}}}[{RI}])))",
             "p99")], unit="s")
    b.timeseries("Picks by outcome", "Picks per second: scored, fallback, no_endpoint, shed, error.",
                 [(f"sum by (outcome) (rate(goodput_scheduler_picks_total{{{S}}}[{RI}]))", "{{outcome}}")],
                 unit="reqps", w=12, stack=True)
    b.timeseries("Pick latency", "p50, p90 and p99 of one pick.",
                 [(f"histogram_quantile({q}, sum by (le) (rate(goodput_scheduler_pick_duration_seconds_bucket{{{S}}}[{RI}])))",
                   f"p{int(q * 100)}") for q in (0.5, 0.9, 0.99)],
                 unit="s", w=12)
    b.timeseries("TTFT headroom at pick",
                 "SLO minus predicted TTFT of the chosen endpoint, for requests with an SLO: "
                 "p10 near or below zero means picks are at the edge of the objective.",
                 [(f"histogram_quantile({q}, sum by (le) (rate(goodput_scheduler_ttft_headroom_seconds_bucket{{{S}}}[{RI}])))",
                   f"p{int(q * 100)}") for q in (0.1, 0.5, 0.9)],
                 unit="s", w=12, min_zero=False)
    b.timeseries("SLO violations", "Requests per second that missed their TTFT or TPOT objective.",
                 [(f"sum by (kind) (rate(goodput_scheduler_slo_violations_total{{{S}}}[{RI}]))", "{{kind}}")],
                 unit="reqps", w=12)
    b.timeseries("Requests in flight per endpoint", "Requests the scheduler has sent and not seen finish.",
                 [(f"sum by (endpoint) (goodput_scheduler_endpoint_requests_in_flight{{{S}}})", "{{endpoint}}")],
                 w=12)
    b.timeseries("Endpoints by state", "Ready, stale (metrics too old) and down endpoints.",
                 [(f"sum by (state) (goodput_scheduler_endpoints{{{S}}})", "{{state}}")],
                 w=12, stack=True)
    b.timeseries("Training samples sent", "Observed requests fed back to the predictor per second.",
                 [(f"sum(rate(goodput_scheduler_training_samples_total{{{S}}}[{RI}]))", "samples/s")],
                 w=12)
    b.timeseries("Predicted vs observed TTFT (mean)",
                 "Mean predicted and observed TTFT of picked requests.",
                 [(f"sum(rate(goodput_scheduler_predicted_ttft_seconds_sum{{{S}}}[{RI}])) / "
                   f"sum(rate(goodput_scheduler_predicted_ttft_seconds_count{{{S}}}[{RI}]))", "predicted"),
                  (f"sum(rate(goodput_scheduler_observed_ttft_seconds_sum{{{S}}}[{RI}])) / "
                   f"sum(rate(goodput_scheduler_observed_ttft_seconds_count{{{S}}}[{RI}]))", "observed")],
                 unit="s", w=12)
    b.timeseries("Requests waiting for an endpoint",
                 "Requests held because no model server can take them (a fleet scaled to zero, or "
                 "every replica starting): what wakes a fleet at zero (ModelAutoscaler "
                 "metrics.gateway). Routed when a replica is ready, or answered 503 after "
                 "--hold-when-no-endpoint-s.",
                 [(f"sum(goodput_scheduler_requests_waiting{{{S}}})", "waiting")],
                 w=12)
    return b


def vllm():
    b = Board(
        "goodput-vllm-fleet", "goodput / vLLM fleet",
        "The model servers as vLLM reports them: latency quantiles, queues, KV cache, tokens, "
        "preemptions and prefix caching, per model and pod.",
        ["vllm"],
        [datasource_var(),
         query_var("namespace", "Namespace", "label_values(vllm:num_requests_running, namespace)"),
         query_var("model", "Model",
                   'label_values(vllm:num_requests_running{namespace=~"$namespace"}, model_name)'),
         query_var("pod", "Pod",
                   'label_values(vllm:num_requests_running{namespace=~"$namespace", '
                   'model_name=~"$model"}, pod)')],
    )
    b.stat("Requests per second", "Finished requests per second.",
           [(f"sum(rate(vllm:request_success_total{{{VP}}}[{RI}]))", "req/s")], unit="reqps")
    b.stat("Running / waiting", "Requests in the running batches and in the queues.",
           [(f"sum(vllm:num_requests_running{{{VP}}})", "running"),
            (f"sum(vllm:num_requests_waiting{{{VP}}})", "waiting")])
    b.stat("Mean KV-cache usage", "Mean share of KV-cache blocks in use over the pods.",
           [(f"avg(vllm:kv_cache_usage_perc{{{VP}}})", "kv")], unit="percentunit", decimals=1,
           thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.8},
                       {"color": "red", "value": 0.95}])
    b.stat("Output tokens per second", "Generated tokens per second over the fleet.",
           [(f"sum(rate(vllm:generation_tokens_total{{{VP}}}[{RI}]))", "tok/s")])
    for title, metric, desc in [
        ("Time to first token", "vllm:time_to_first_token_seconds", "TTFT quantiles per model."),
        ("Inter-token latency", "vllm:inter_token_latency_seconds",
         "Time between successive tokens of a request, quantiles per model."),
        ("Per-request time per output token", "vllm:request_time_per_output_token_seconds",
         "Each request's mean time per output token (what goodput's ITL SLO judges)."),
        ("End-to-end latency", "vllm:e2e_request_latency_seconds", "Request latency quantiles per model."),
    ]:
        b.timeseries(title, desc,
                     [(f"histogram_quantile({q}, sum by (model_name, le) (rate({metric}_bucket{{{VP}}}[{RI}])))",
                       f"{{{{model_name}}}} p{int(q * 100)}") for q in (0.5, 0.9, 0.99)],
                     unit="s", w=12)
    b.timeseries("Queue time", "Time requests wait before they are scheduled, p50 and p99.",
                 [(f"histogram_quantile({q}, sum by (model_name, le) (rate(vllm:request_queue_time_seconds_bucket{{{VP}}}[{RI}])))",
                   f"{{{{model_name}}}} p{int(q * 100)}") for q in (0.5, 0.99)],
                 unit="s", w=12)
    b.timeseries("Waiting requests per pod", "Queue depth per pod.",
                 [(f"sum by (pod) (vllm:num_requests_waiting{{{VP}}})", "{{pod}}")], w=12)
    b.timeseries("Running requests per pod", "Batch size per pod.",
                 [(f"sum by (pod) (vllm:num_requests_running{{{VP}}})", "{{pod}}")], w=12)
    b.timeseries("KV-cache usage per pod", "Share of KV-cache blocks in use.",
                 [(f"max by (pod) (vllm:kv_cache_usage_perc{{{VP}}})", "{{pod}}")],
                 unit="percentunit", w=12)
    b.timeseries("Tokens per second", "Prompt and generated tokens per second per model.",
                 [(f"sum by (model_name) (rate(vllm:prompt_tokens_total{{{VP}}}[{RI}]))", "{{model_name}} prompt"),
                  (f"sum by (model_name) (rate(vllm:generation_tokens_total{{{VP}}}[{RI}]))", "{{model_name}} generated")],
                 w=12)
    b.timeseries("Prefix-cache hit ratio", "Prompt tokens found in the prefix cache.",
                 [(f"sum by (model_name) (rate(vllm:prefix_cache_hits_total{{{VP}}}[{RI}])) / "
                   f"sum by (model_name) (rate(vllm:prefix_cache_queries_total{{{VP}}}[{RI}]))", "{{model_name}}")],
                 unit="percentunit", w=8)
    b.timeseries("Preemptions", "Preemptions per second per pod (KV cache pressure).",
                 [(f"sum by (pod) (rate(vllm:num_preemptions_total{{{VP}}}[{RI}]))", "{{pod}}")], w=8)
    b.timeseries("Finished requests by reason", "Requests per second by finish reason.",
                 [(f"sum by (finished_reason) (rate(vllm:request_success_total{{{VP}}}[{RI}]))",
                   "{{finished_reason}}")],
                 unit="reqps", w=8, stack=True)
    return b


BOARDS = {"autoscaling.json": autoscaling, "predictor.json": predictor,
          "scheduler.json": scheduler, "vllm-fleet.json": vllm}


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    for name, build in BOARDS.items():
        (out / name).write_text(json.dumps(build().json(), indent=2) + "\n")


if __name__ == "__main__":
    main()
