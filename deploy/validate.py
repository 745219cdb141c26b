#!/usr/bin/env python3
"""Validate everything under deploy/ without a cluster.

  python3 deploy/validate.py                          all checks
  python3 deploy/validate.py --metrics-file scrape.txt  also: every metric used
                                                      exists in a real /metrics scrape
  python3 deploy/validate.py --agent-bin target/release/egress-agent
                                                      also: flags used exist in `run --help`
  python3 deploy/validate.py --sync-rules             rewrite the PrometheusRule from
                                                      deploy/prometheus/rules.yml

What it checks:
  1. Kustomize renders: every kustomization under deploy/kubernetes is rendered
     by a built-in resolver (resources, configMapGenerator, JSON 6902 patches:
     all these manifests use) and, when a real kustomize is on PATH (`kustomize`
     or `kubectl kustomize`), by it too: both outputs must be identical.
  2. Schemas: every rendered object validates (strict: unknown fields fail)
     against the Kubernetes OpenAPI schemas of the `kubernetes-validate`
     package, for each --k8s-version. ServiceMonitor / PodMonitor /
     PrometheusRule (CRDs) are checked structurally instead.
  3. Policy: the DaemonSet keeps least privilege (exactly BPF, PERFMON and
     NET_ADMIN, not privileged, host mounts recursively read-only and no
     /sys/fs/bpf, no hostPID, the shipped Localhost seccomp profile, which
     must deny mount/unshare/setns/ptrace/... and equal its generation by
     deploy/seccomp/generate.py), RBAC is list/watch only, the Containerfile
     is FROM scratch with the DaemonSet's entrypoint and user, names and
     selectors agree.
  4. Agent config: both config.yaml files describe the same, well-formed chain.
  5. Rules: deploy/prometheus/rules.yml equals the PrometheusRule's
     spec.groups; `promtool check rules` and `promtool check config` pass;
     alerts on planned metrics live only in the group egress-observer.hops;
     every alert has its annotations and a runbook section in deploy/README.md.
  6. Metric names used by the rules and the dashboard are known; with
     --metrics-file each must exist in the scrape (planned ones are reported
     as planned), and `promtool check metrics` must pass on it.

Needs Python 3.11, PyYAML and kubernetes-validate (pip), promtool (Debian
package `prometheus`; its service need not run). A missing tool is a failure
unless --allow-missing-tools is given. Exit status 0 only if nothing failed.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("validate.py needs PyYAML: pip install pyyaml kubernetes-validate")

from validate_common import *  # noqa: F403 (constants, Report, helpers)
from validate_exposure import check_exposure  # noqa: E402
from validate_k8s import (canonical, check_agent_flags, check_configs, check_policy, render_all,  # noqa: F401
                          validate_schemas)

# ---------------------------------------------------------------------------
# 5/6. Rules, dashboard, metric names

STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (no parser needed for ours)."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    s = STRINGS.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = GROUPING.sub(" ", s)
    s = re.sub(r"\boffset\s+-?[\w$]+", " ", s)
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])", s):
        if re.match(r"\s*\(", s[m.end():]) or m.group(1).lower() in KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def label_names(expr: str) -> set[str]:
    """Label names a PromQL expression matches on or groups by."""
    out: set[str] = set()
    s = STRINGS.sub('""', expr)
    for inner in re.findall(r"\{([^}]*)\}", s):
        out |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", inner))
    for _, inner in GROUPING.findall(s):
        out |= {x.strip() for x in inner.split(",") if x.strip()}
    return out


def uses_planned(expr: str) -> set[str]:
    names = metric_names(expr)
    planned = names & PLANNED
    labels = label_names(expr)
    for metric, pl in PLANNED_LABELS.items():
        if metric in names and labels & pl:
            planned.add(f"{metric}{{{','.join(sorted(labels & pl))}}}")
    return planned


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            for t in p.get("targets") or []:
                if t.get("expr"):
                    out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
            walk(p.get("panels") or [])

    walk(dash.get("panels") or [])
    for var in (dash.get("templating") or {}).get("list") or []:
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if var.get("type") != "query" or not isinstance(q, str):
            continue
        m = re.match(r"\s*label_values\((.*),\s*\w+\s*\)\s*$", q)
        if m:
            out.append((f"variable ${var['name']}", m.group(1)))
            continue
        m = re.match(r"\s*query_result\((.*)\)\s*$", q)
        if m:
            out.append((f"variable ${var['name']}", m.group(1)))
    return out


# Series the rule file records (`record:`): known names for the alerts and
# the dashboard, computed by Prometheus, never in a scrape.
RECORDED: set[str] = set()


def check_rules(r: Report, allow_missing: bool) -> list[tuple[str, str]]:
    r.section("5. alert rules")
    exprs: list[tuple[str, str]] = []
    try:
        rules = yaml.safe_load(RULES_FILE.read_text())
        pr = load_yaml_docs(PROMETHEUS_RULE)
    except (OSError, yaml.YAMLError) as e:
        r.fail(f"cannot load rules: {e}")
        return exprs
    prs = [o for o in pr if o.get("kind") == "PrometheusRule"]
    if r.check(len(prs) == 1, f"{rel(PROMETHEUS_RULE)} holds one PrometheusRule"):
        r.check(prs[0].get("spec", {}).get("groups") == rules.get("groups"),
                f"{rel(RULES_FILE)} equals the PrometheusRule's spec.groups",
                "run `python3 deploy/validate.py --sync-rules`")
    readme = README.read_text() if README.exists() else ""
    anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
               for h in re.findall(r"^#{2,4}\s+(.+)$", readme, re.M)}
    alerts = []
    for g in rules.get("groups") or []:
        for rule in g.get("rules") or []:
            name = rule.get("alert") or rule.get("record")
            alerts.append(name)
            if "record" in rule:
                RECORDED.add(name)
            exprs.append((f"rule {name}", rule.get("expr", "")))
            planned = uses_planned(rule.get("expr", ""))
            if g["name"] == PLANNED_GROUP:
                r.check(bool(planned), f"{name}: in {PLANNED_GROUP} and uses planned {sorted(planned)}",
                        "uses no planned metric: move it to another group")
            else:
                r.check(not planned, f"{name}: uses only exported metrics (group {g['name']})",
                        f"uses planned {sorted(planned)}: move it to {PLANNED_GROUP}")
            if "alert" in rule:
                ann = rule.get("annotations") or {}
                missing = [a for a in ("summary", "description", "runbook_url") if not ann.get(a)]
                sev = (rule.get("labels") or {}).get("severity")
                r.check(not missing and sev in ("critical", "warning", "info"),
                        f"{name}: severity {sev}, summary, description, runbook_url",
                        f"missing {missing}" if missing else f"severity {sev!r}")
                anchor = ann.get("runbook_url", "").partition("#")[2]
                r.check(anchor in anchors, f"{name}: runbook section #{anchor} exists in {rel(README)}")
                if "hop" in label_names(rule.get("expr", "")) and "by (hop" in rule.get("expr", ""):
                    r.check("$labels.hop" in ann.get("summary", "") + ann.get("description", ""),
                            f"{name}: annotations name the hop")
    r.check(len(alerts) == len(set(alerts)), "alert names are unique")
    promtool = shutil.which("promtool")
    if promtool:
        tests = sorted(RULE_TESTS.glob("*.yml"))
        r.check(bool(tests), f"recorded rule tests exist in {rel(RULE_TESTS)}")
        with tempfile.TemporaryDirectory() as tmp:
            config = prom_config_for_check(Path(tmp))
            for args in (["check", "rules", str(RULES_FILE)], ["check", "config", str(config)]) + tuple(
                    ["test", "rules", str(t)] for t in tests):
                out = subprocess.run([promtool] + args, capture_output=True, text=True)
                shown = PROM_CONFIG if args[1] == "config" else Path(args[2])
                r.check(out.returncode == 0, f"promtool {' '.join(args[:2])} {rel(shown)}",
                        (out.stdout + out.stderr).strip())
    elif allow_missing:
        r.note("promtool not found (apt-get install prometheus): promtool checks skipped")
    else:
        r.fail("promtool not found (apt-get install prometheus)")
    return exprs


def prom_config_for_check(tmp: Path) -> Path:
    """promtool check config stats every TLS file the config names: check a
    copy (beside a copy of rules.yml) whose TLS files exist, empty, in `tmp`."""
    text = PROM_CONFIG.read_text()
    for key, path in re.findall(r"^\s*(ca_file|cert_file|key_file):\s*(\S+)", text, re.M):
        stand_in = tmp / Path(path).name
        stand_in.touch()
        text = text.replace(path, str(stand_in))
    shutil.copy(RULES_FILE, tmp / RULES_FILE.name)
    out = tmp / PROM_CONFIG.name
    out.write_text(text)
    return out


def parse_exposition(text: str) -> tuple[set[str], dict[str, set[str]]]:
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?", line)
        if not m:
            continue
        names.add(m.group(1))
        labels.setdefault(m.group(1), set()).update(re.findall(r'([A-Za-z_]\w*)="', m.group(3) or ""))
    return names, labels


def source_on(source: str, scrape: set[str], text: str) -> bool:
    """Is the optional source of a CONDITIONAL metric on in this scrape?"""
    if source == CHAIN_SOURCE:
        return re.search(r'[{,]hop="[^"]+"', text) is not None
    return any(n.startswith(source) for n in scrape)


def check_metric_names(r: Report, exprs: list[tuple[str, str]], metrics_file: Path | None,
                       allow_missing: bool) -> None:
    r.section("6. metric names in rules and dashboard")
    try:
        dash = json.loads(DASHBOARD.read_text())
        r.ok(f"{rel(DASHBOARD)}: valid JSON, {len(dash.get('panels', []))} panels")
    except (OSError, json.JSONDecodeError) as e:
        r.fail(f"{rel(DASHBOARD)}: {e}")
        dash = {}
    ds_vars = [v for v in (dash.get("templating") or {}).get("list") or [] if v.get("type") == "datasource"]
    r.check(bool(ds_vars), "dashboard data source is a template variable")
    bad_ds = []

    def walk_ds(panels: list[dict]) -> None:
        for p in panels:
            for obj in [p] + (p.get("targets") or []):
                uid = (obj.get("datasource") or {}).get("uid") if isinstance(obj.get("datasource"), dict) else None
                if p.get("type") != "row" and uid != "${datasource}":
                    bad_ds.append(p.get("title"))
            walk_ds(p.get("panels") or [])

    walk_ds(dash.get("panels") or [])
    r.check(not bad_ds, "every panel and query uses ${datasource}", str(sorted(set(map(str, bad_ds)))))
    ids = [p.get("id") for p in dash.get("panels") or []]
    r.check(len(ids) == len(set(ids)), "dashboard panel ids are unique")
    all_exprs = exprs + dashboard_exprs(dash)
    used: dict[str, list[str]] = {}
    for where, e in all_exprs:
        for n in metric_names(e):
            used.setdefault(n, []).append(where)
    scrape: set[str] | None = None
    scrape_labels: dict[str, set[str]] = {}
    text = ""
    if metrics_file:
        text = metrics_file.read_text()
        scrape, scrape_labels = parse_exposition(text)
        r.note(f"{metrics_file}: {len(scrape)} metric names")
        promtool = shutil.which("promtool")
        if promtool:
            out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
            r.check(out.returncode == 0, f"promtool check metrics {metrics_file}", (out.stdout + out.stderr).strip())
        elif not allow_missing:
            r.fail("promtool not found (apt-get install prometheus)")
    for name in sorted(used):
        where = ", ".join(sorted(set(used[name]))[:3]) + (" ..." if len(set(used[name])) > 3 else "")
        if name in SYNTHETIC:
            r.ok(f"{name}: made by Prometheus ({where})")
        elif name in RECORDED:
            r.ok(f"{name}: recorded by a rule of {rel(RULES_FILE)} ({where})")
        elif name in PLANNED:
            if scrape is not None and name in scrape:
                r.fail(f"{name}: listed as planned but the agent exports it now: move it to EXISTING in "
                       f"validate.py and its alerts out of {PLANNED_GROUP}")
            else:
                r.ok(f"{name}: planned, not exported yet ({where})")
        elif name in CONDITIONAL and scrape is not None and not source_on(CONDITIONAL[name], scrape, text):
            r.ok(f"{name}: its source ({CONDITIONAL[name]}*) is off in this scrape ({where})")
        elif scrape is not None:
            r.check(name in scrape, f"{name}: in the scrape ({where})",
                    "not in the scrape; a counter vector with no label set observed yet is absent from the "
                    "exposition: initialise its known label sets to 0 where it is registered (egress-agent/src/sinks/metrics.rs), or scrape after traffic")
        else:
            r.check(name in EXISTING or name in CONDITIONAL, f"{name}: exported by the agent ({where})",
                    "unknown metric name (typo?), not in EXISTING or PLANNED")
    if scrape is not None:
        for metric, pl in PLANNED_LABELS.items():
            now = pl & scrape_labels.get(metric, set())
            if now:
                r.note(f"{metric} now carries planned labels {sorted(now)}: update PLANNED_LABELS")
        unused = sorted(n for n in scrape if n.startswith("egress_") and n not in used)
        if unused:
            r.note(f"exported but used by no rule or panel: {', '.join(unused)}")


# ---------------------------------------------------------------------------


def sync_rules() -> None:
    """Write the PrometheusRule from rules.yml, keeping its text (and comments)."""
    text = RULES_FILE.read_text()
    idx = re.search(r"^groups:\s*$", text, re.M)
    if not idx:
        sys.exit(f"{rel(RULES_FILE)}: no top-level 'groups:' line")
    body = text[idx.start():]
    indented = "".join(("  " + line) if line.strip() else line for line in body.splitlines(keepends=True))
    out = (
        "# GENERATED from deploy/prometheus/rules.yml by `python3 deploy/validate.py --sync-rules`.\n"
        "# Do not edit: edit rules.yml and regenerate (validate.py fails while they differ).\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: egress-observer\n"
        "  namespace: egress-observer\n"
        "  labels:\n"
        "    app.kubernetes.io/name: egress-agent\n"
        "    app.kubernetes.io/part-of: egress-observer\n"
        "spec:\n" + indented
    )
    PROMETHEUS_RULE.write_text(out)
    print(f"wrote {rel(PROMETHEUS_RULE)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metrics-file", type=Path, help="a real /metrics scrape of the agent")
    ap.add_argument("--agent-bin", help="egress-agent binary: check the flags used against `run --help`")
    ap.add_argument("--k8s-version", action="append", default=[],
                    help=f"Kubernetes version(s) to validate against (default: {DEFAULT_K8S_MIN} and the newest "
                         "kubernetes-validate knows)")
    ap.add_argument("--sync-rules", action="store_true", help="regenerate the PrometheusRule from rules.yml and exit")
    ap.add_argument("--allow-missing-tools", action="store_true",
                    help="skip (instead of fail) checks whose tool (kubernetes-validate, promtool) is missing")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.sync_rules:
        sync_rules()
        return 0
    if args.metrics_file and not args.metrics_file.is_file():
        ap.error(f"--metrics-file {args.metrics_file}: no such file")
    r = Report(args.verbose)
    rendered = render_all(r)
    validate_schemas(r, rendered, args.k8s_version, args.allow_missing_tools)
    check_policy(r, rendered)
    check_exposure(r, rendered)
    if args.agent_bin:
        check_agent_flags(r, args.agent_bin)
    check_configs(r)
    exprs = check_rules(r, args.allow_missing_tools)
    check_metric_names(r, exprs, args.metrics_file, args.allow_missing_tools)
    print(f"\nvalidate: {r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
