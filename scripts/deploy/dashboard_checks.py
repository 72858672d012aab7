#!/usr/bin/env python3
"""Static checks of dashboards/*.json (the live-stack test, live_dashboards.py, runs the queries).

- the committed JSON is what dashboards/build.py produces (rebuilt into a temp directory);
- every file is valid JSON with a unique uid, a title and schemaVersion >= 36;
- a `datasource` variable of type datasource (query prometheus), used by every panel and target
  as `${datasource}`;
- query variables offer All with `.*`; custom variables have a default;
- panel ids are unique, every panel has at least one target with a non-empty expr, and every
  `$variable` an expr uses is defined (or one of Grafana's built-ins);
- every expr, with the variables substituted, parses as PromQL (`promtool check rules` on a
  rule file holding each as a recording rule).
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILTINS = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}
failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


def main():
    boards = sorted((ROOT / "dashboards").glob("*.json"))
    if len(boards) < 4:
        fail(f"expected at least 4 dashboards, found {len(boards)}")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "dashboards" / "build.py"), tmp], check=True)
        built = {p.name: p.read_text() for p in Path(tmp).glob("*.json")}
    committed = {p.name: p.read_text() for p in boards}
    if built != committed:
        fail("dashboards/*.json differ from `python3 dashboards/build.py` output: rebuild them")

    uids, rules = set(), []
    for path in boards:
        name = path.name
        try:
            d = json.loads(path.read_text())
        except ValueError as e:
            fail(f"{name}: invalid JSON: {e}")
            continue
        if d.get("uid") in uids or not d.get("uid"):
            fail(f"{name}: missing or duplicate uid {d.get('uid')}")
        uids.add(d.get("uid"))
        if not d.get("title") or d.get("schemaVersion", 0) < 36:
            fail(f"{name}: needs a title and schemaVersion >= 36")
        variables = dict(BUILTINS)
        ds = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
        if not ds or ds[0]["type"] != "datasource" or ds[0]["query"] != "prometheus":
            fail(f"{name}: no prometheus `datasource` variable")
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                if not (v.get("includeAll") and v.get("allValue") == ".*"):
                    fail(f"{name}: variable {v['name']} does not default to All (.*)")
                if v["datasource"].get("uid") != "${datasource}":
                    fail(f"{name}: variable {v['name']} does not use ${{datasource}}")
                variables[v["name"]] = ".*"
            elif v["type"] == "custom":
                if not v.get("current", {}).get("value"):
                    fail(f"{name}: custom variable {v['name']} has no default")
                variables[v["name"]] = v["current"]["value"]
        ids = [p.get("id") for p in d["panels"]]
        if len(ids) != len(set(ids)) or None in ids:
            fail(f"{name}: panel ids are not unique: {ids}")
        for p in d["panels"]:
            where = f"{name} panel {p.get('id')} ({p.get('title')})"
            if p.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"{where}: datasource is not ${{datasource}}")
            if not p.get("targets"):
                fail(f"{where}: no targets")
            for t in p.get("targets", []):
                expr = t.get("expr", "")
                if not expr.strip():
                    fail(f"{where}: target {t.get('refId')} has no expr")
                    continue
                if t.get("datasource", {}).get("uid") != "${datasource}":
                    fail(f"{where}: target {t.get('refId')} datasource is not ${{datasource}}")
                used = set(re.findall(r"\$\{?(\w+)\}?", expr))
                unknown = used - set(variables)
                if unknown:
                    fail(f"{where}: undefined variables {sorted(unknown)}")
                    continue
                for var in sorted(used, key=len, reverse=True):
                    expr = expr.replace("${" + var + "}", variables[var]).replace("$" + var, variables[var])
                rules.append({"record": f"dashboard:check_{len(rules)}", "expr": expr,
                              "labels": {"where": where[:200]}})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        json.dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f)
        f.flush()
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"a dashboard query is not valid PromQL:\n{r.stdout}{r.stderr}")
    print(f"dashboard-checks: {len(boards)} dashboards, {len(rules)} queries")
    if failures:
        sys.exit(f"dashboard-checks: {len(failures)} failure(s)")
    print("dashboard-checks: ok")


if __name__ == "__main__":
    main()
