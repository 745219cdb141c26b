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
  3. Policy: the DaemonSet keeps least privilege (capabilities, read-only
     mounts, no hostPID ...), RBAC is read-only, names and selectors agree.
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
import tomllib
from pathlib import Path
from typing import Any

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("validate.py needs PyYAML: pip install pyyaml kubernetes-validate")

# ---------------------------------------------------------------------------
# Metric names. Keep in step with egress-agent/src/metrics.rs.

# Exported by the agent today (exposition names; a histogram's series listed).
EXISTING = {
    "egress_connections_total",
    "egress_connection_closes_total",
    "egress_connect_duration_seconds_bucket",
    "egress_connect_duration_seconds_sum",
    "egress_connect_duration_seconds_count",
    "egress_tcp_retransmits_total",
    "egress_events_produced_total",
    "egress_events_delivered_total",
    "egress_events_lost_total",
    "egress_decode_errors_total",
    "egress_orphan_events_total",
    "egress_kernel_read_errors_total",
    "egress_program_attached",
    "egress_flows_tracked",
    "egress_build_info",
    "egress_proxy_tunnels_total",   # {hop, status, target}
    "egress_hop_failures_total",    # {hop, reason}
}

# Exported only while their source runs: the Kubernetes watch (--kube, in a
# cluster) and conntrack (--conntrack). A scrape of an agent without that
# source lacks them; with --metrics-file they must be in the scrape only if
# some metric of the same source is.
CONDITIONAL = {
    "egress_kube_watch_up": "egress_kube_",
    "egress_kube_objects": "egress_kube_",
    "egress_kube_objects_malformed_total": "egress_kube_",
    "egress_kube_watch_errors_total": "egress_kube_",
    "egress_conntrack_events_total": "egress_conntrack_",
    "egress_conntrack_lost_total": "egress_conntrack_",
    "egress_conntrack_entries": "egress_conntrack_",
    "egress_conntrack_insert_failed_total": "egress_conntrack_",
    "egress_conntrack_drop_total": "egress_conntrack_",
}

# Planned (active probes, issue 9): used by the dashboard before the agent
# exports them. Move a name to EXISTING when the agent exports it.
PLANNED = {
    "egress_probe_success",         # {target}
}
# Planned labels on metrics that exist already.
PLANNED_LABELS: dict[str, set[str]] = {}

# Made by Prometheus itself, not by the agent.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added"}

PLANNED_GROUP = "egress-observer.planned"
JOB = "egress-agent"

# ---------------------------------------------------------------------------
DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
K8S = DEPLOY / "kubernetes"
KUSTOMIZATIONS = [
    "base",
    "overlays/privileged",
    "monitoring",
    "monitoring/rules",
    "monitoring/podmonitor",
]
RULES_FILE = DEPLOY / "prometheus" / "rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS_RULE = K8S / "monitoring" / "rules" / "prometheusrule.yaml"
DASHBOARD = DEPLOY / "grafana" / "egress-observer.json"
README = DEPLOY / "README.md"
CONTAINERFILE = DEPLOY / "Containerfile"
SYSTEMD_UNIT = DEPLOY / "gce" / "egress-agent.service"
GCE_ENV = DEPLOY / "gce" / "egress-agent.env"
CONFIGS = [K8S / "base" / "config.yaml", DEPLOY / "gce" / "config.yaml"]

CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
DEFAULT_K8S_MIN = "1.33.0"  # lowest release k8s-openapi is built for (feature v1_33)

# DaemonSet policy (least privilege).
# Proven minimal by tests/tests/deploy_caps.rs (real agent, each one removed in turn).
REQUIRED_CAPS = {"BPF", "PERFMON", "NET_ADMIN"}
HOST_MOUNTS = {  # host path -> (container path, read-only)
    "/sys/kernel/tracing": ("/sys/kernel/tracing", True),
    "/sys/kernel/btf": ("/sys/kernel/btf", True),
    "/sys/fs/cgroup": ("/sys/fs/cgroup", True),
    "/sys/fs/bpf": ("/sys/fs/bpf", False),
}
RBAC_RESOURCES = {("", "pods"), ("", "services"), ("", "nodes"), ("discovery.k8s.io", "endpointslices")}
UNIT_CAPS = {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}


class Report:
    def __init__(self, verbose: bool) -> None:
        self.passed = 0
        self.failed = 0
        self.verbose = verbose

    def section(self, title: str) -> None:
        print(f"\n== {title}")

    def ok(self, msg: str) -> None:
        self.passed += 1
        print(f"  ok    {msg}")

    def fail(self, msg: str) -> None:
        self.failed += 1
        print(f"  FAIL  {msg}")

    def check(self, cond: bool, msg: str, detail: str = "") -> bool:
        if cond:
            self.ok(msg)
        else:
            self.fail(msg + (f": {detail}" if detail else ""))
        return cond

    def note(self, msg: str) -> None:
        print(f"  note  {msg}")

    def info(self, msg: str) -> None:
        if self.verbose:
            print(f"        {msg}")


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def obj_id(o: dict) -> str:
    md = o.get("metadata") or {}
    ns = md.get("namespace")
    return f"{o.get('kind')}/{(ns + '/') if ns else ''}{md.get('name')}"


# ---------------------------------------------------------------------------
# 1. Kustomize


class ResolveError(Exception):
    pass


SUPPORTED_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "patches"}


def json_pointer_parts(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ResolveError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: list[dict]) -> Any:
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get("op"), json_pointer_parts(op.get("path", ""))
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if kind in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(idx, value)
                else:
                    parent[idx] = value
            else:
                if kind == "replace" and last not in parent:
                    raise ResolveError(f"replace: {op['path']} does not exist")
                parent[last] = value
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        elif kind == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op.get("value"):
                raise ResolveError(f"test failed at {op['path']}")
        else:
            raise ResolveError(f"JSON patch op {kind!r} not supported by the built-in resolver")
    return doc


def target_matches(obj: dict, target: dict) -> bool:
    api = obj.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    checks = {
        "kind": obj.get("kind"),
        "name": (obj.get("metadata") or {}).get("name"),
        "namespace": (obj.get("metadata") or {}).get("namespace"),
        "group": group,
        "version": version,
    }
    for key, want in target.items():
        if key not in checks:
            raise ResolveError(f"patch target field {key!r} not supported by the built-in resolver")
        if checks[key] != want:
            return False
    return True


def resolve(directory: Path, seen: tuple[Path, ...] = ()) -> list[dict]:
    """A minimal kustomize: enough for the kustomizations of this repository."""
    directory = directory.resolve()
    if directory in seen:
        raise ResolveError(f"kustomization cycle through {rel(directory)}")
    kfile = directory / "kustomization.yaml"
    if not kfile.exists():
        raise ResolveError(f"{rel(directory)} has no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - SUPPORTED_KUSTOMIZATION_KEYS
    if unknown:
        raise ResolveError(f"{rel(kfile)}: {sorted(unknown)} not supported by the built-in resolver "
                           "(extend validate.py or keep kustomizations to resources/configMapGenerator/patches)")
    objs: list[dict] = []
    for res in k.get("resources") or []:
        p = (directory / res).resolve()
        if p.is_dir():
            objs.extend(resolve(p, seen + (directory,)))
        elif p.is_file():
            objs.extend(load_yaml_docs(p))
        else:
            raise ResolveError(f"{rel(kfile)}: resource {res!r} not found")
    for gen in k.get("configMapGenerator") or []:
        options = gen.get("options") or {}
        if not options.get("disableNameSuffixHash"):
            raise ResolveError(f"{rel(kfile)}: configMapGenerator {gen.get('name')!r} needs "
                               "options.disableNameSuffixHash: true for the built-in resolver")
        data: dict[str, str] = {}
        for f in gen.get("files") or []:
            key, _, path = f.rpartition("=") if "=" in f else ("", "", f)
            data[key or Path(path).name] = (directory / path).read_text()
        for lit in gen.get("literals") or []:
            key, _, value = lit.partition("=")
            data[key] = value
        md: dict[str, Any] = {"name": gen["name"]}
        if gen.get("namespace"):
            md["namespace"] = gen["namespace"]
        if options.get("labels"):
            md["labels"] = dict(options["labels"])
        if options.get("annotations"):
            md["annotations"] = dict(options["annotations"])
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": md, "data": data})
    for patch in k.get("patches") or []:
        text = (directory / patch["path"]).read_text() if "path" in patch else patch.get("patch", "")
        body = yaml.safe_load(text)
        if not isinstance(body, list):
            raise ResolveError(f"{rel(kfile)}: only JSON 6902 patches (a list of ops) are supported by the built-in resolver")
        target = patch.get("target") or {}
        hits = [i for i, o in enumerate(objs) if target_matches(o, target)]
        if not hits:
            raise ResolveError(f"{rel(kfile)}: patch target {target} matches nothing")
        for i in hits:
            objs[i] = json_patch(objs[i], body)
    return objs


def external_kustomize() -> tuple[list[str], str] | None:
    if shutil.which("kustomize"):
        out = subprocess.run(["kustomize", "version"], capture_output=True, text=True)
        return ["kustomize", "build"], f"kustomize {out.stdout.strip()}"
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True)
        if out.returncode == 0 and "Kustomize" in out.stdout:
            ver = " ".join(line.strip() for line in out.stdout.splitlines() if "Kustomize" in line)
            return ["kubectl", "kustomize"], f"kubectl kustomize ({ver})"
    return None


def canonical(objs: list[dict]) -> list[str]:
    return sorted(json.dumps(o, sort_keys=True) for o in objs)


def render_all(r: Report) -> dict[str, list[dict]]:
    r.section("1. kustomize render")
    ext = external_kustomize()
    if ext:
        r.note(f"real kustomize: {ext[1]}; its output must equal the built-in resolver's")
    else:
        r.note("no kustomize on PATH (`kustomize` or `kubectl kustomize`): built-in resolver only")
    rendered: dict[str, list[dict]] = {}
    for name in KUSTOMIZATIONS:
        d = K8S / name
        try:
            objs = resolve(d)
        except (ResolveError, OSError, KeyError, IndexError, yaml.YAMLError) as e:
            r.fail(f"{rel(d)}: built-in render: {e}")
            continue
        rendered[name] = objs
        r.ok(f"{rel(d)}: {len(objs)} objects ({', '.join(obj_id(o) for o in objs)})")
        if ext:
            out = subprocess.run(ext[0] + [str(d)], capture_output=True, text=True)
            if out.returncode != 0:
                r.fail(f"{rel(d)}: {' '.join(ext[0])} failed: {out.stderr.strip()}")
                continue
            real = [o for o in yaml.safe_load_all(out.stdout) if o is not None]
            same = canonical(real) == canonical(objs)
            detail = ""
            if not same:
                a, b = set(canonical(real)), set(canonical(objs))
                detail = f"only in kustomize: {sorted(a - b)[:1]} only in resolver: {sorted(b - a)[:1]}"
            r.check(same, f"{rel(d)}: {ext[0][0]} output identical ({len(real)} objects)", detail)
    return rendered


# ---------------------------------------------------------------------------
# 2. Schemas

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")

CRD_FIELDS = {
    "ServiceMonitor.spec": {"jobLabel", "targetLabels", "podTargetLabels", "endpoints", "selector",
                            "namespaceSelector", "sampleLimit", "targetLimit", "labelLimit",
                            "labelNameLengthLimit", "labelValueLengthLimit", "attachMetadata",
                            "scrapeProtocols", "keepDroppedTargets", "bodySizeLimit", "scrapeClass",
                            "selectorMechanism", "fallbackScrapeProtocol", "nativeHistogramBucketLimit",
                            "nativeHistogramMinBucketFactor", "scrapeClassicHistograms"},
    "PodMonitor.spec": {"jobLabel", "podTargetLabels", "podMetricsEndpoints", "selector", "namespaceSelector",
                        "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit",
                        "labelValueLengthLimit", "attachMetadata", "scrapeProtocols", "keepDroppedTargets",
                        "bodySizeLimit", "scrapeClass", "selectorMechanism", "fallbackScrapeProtocol",
                        "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
                        "scrapeClassicHistograms"},
    "endpoint": {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
                 "bearerTokenFile", "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps",
                 "trackTimestampsStaleness", "basicAuth", "oauth2", "metricRelabelings", "relabelings",
                 "proxyUrl", "followRedirects", "enableHttp2", "filterRunning", "portNumber",
                 "noProxy", "proxyFromEnvironment", "proxyConnectHeader"},
    "relabeling": {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"},
    "PrometheusRule.spec": {"groups"},
    "group": {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset", "labels"},
    "rule": {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"},
}


def check_keys(r: Report, where: str, obj: Any, allowed_key: str) -> bool:
    if not isinstance(obj, dict):
        r.fail(f"{where}: expected a mapping")
        return False
    extra = set(obj) - CRD_FIELDS[allowed_key]
    if extra:
        r.fail(f"{where}: unknown fields {sorted(extra)}")
        return False
    return True


def check_monitor(r: Report, o: dict, endpoints_key: str) -> None:
    where = obj_id(o)
    spec = o.get("spec") or {}
    good = check_keys(r, where + " spec", spec, f"{o['kind']}.spec")
    eps = spec.get(endpoints_key)
    if not isinstance(eps, list) or not eps:
        r.fail(f"{where}: spec.{endpoints_key} must be a non-empty list")
        return
    for i, ep in enumerate(eps):
        good &= check_keys(r, f"{where} {endpoints_key}[{i}]", ep, "endpoint")
        if not isinstance(ep.get("port"), str):
            good = False
            r.fail(f"{where} {endpoints_key}[{i}]: port must name a port")
        for f in ("interval", "scrapeTimeout"):
            if f in ep and not DURATION.match(str(ep[f])):
                good = False
                r.fail(f"{where} {endpoints_key}[{i}].{f}: {ep[f]!r} is not a duration")
        for j, rl in enumerate(ep.get("relabelings") or []):
            good &= check_keys(r, f"{where} {endpoints_key}[{i}].relabelings[{j}]", rl, "relabeling")
    sel = (spec.get("selector") or {}).get("matchLabels")
    if not isinstance(sel, dict) or not sel:
        good = False
        r.fail(f"{where}: spec.selector.matchLabels must select the agent")
    if good:
        r.ok(f"{where}: structure")


def check_prometheus_rule(r: Report, o: dict) -> None:
    where = obj_id(o)
    spec = o.get("spec") or {}
    good = check_keys(r, where + " spec", spec, "PrometheusRule.spec")
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        r.fail(f"{where}: spec.groups must be a non-empty list")
        return
    for g in groups:
        good &= check_keys(r, f"{where} group {g.get('name')}", g, "group")
        for rule in g.get("rules") or []:
            good &= check_keys(r, f"{where} rule {rule.get('alert') or rule.get('record')}", rule, "rule")
            if not isinstance(rule.get("expr"), str):
                good = False
                r.fail(f"{where}: rule {rule.get('alert')} has no expr string")
            if "for" in rule and not DURATION.match(str(rule["for"])):
                good = False
                r.fail(f"{where}: rule {rule.get('alert')} for: {rule['for']!r} is not a duration")
    if good:
        r.ok(f"{where}: structure")


def validate_schemas(r: Report, rendered: dict[str, list[dict]], versions: list[str], allow_missing: bool) -> None:
    r.section("2. schemas")
    try:
        import kubernetes_validate as kv  # type: ignore
    except ImportError:
        msg = "kubernetes-validate is not installed (pip install kubernetes-validate)"
        if allow_missing:
            r.note(msg + ": schema validation skipped")
        else:
            r.fail(msg)
        kv = None
    if kv is not None and not versions:
        versions = [DEFAULT_K8S_MIN, kv.latest_version()]
        versions = sorted(set(versions), key=lambda v: tuple(int(x) for x in v.split(".")))
    seen: dict[str, tuple[dict, str]] = {}
    for root, objs in rendered.items():
        for o in objs:
            seen.setdefault(json.dumps(o, sort_keys=True), (o, root))
    for o, root in seen.values():
        if o.get("kind") in CRD_KINDS:
            if o.get("apiVersion") != "monitoring.coreos.com/v1":
                r.fail(f"{obj_id(o)}: apiVersion must be monitoring.coreos.com/v1")
            elif o["kind"] == "ServiceMonitor":
                check_monitor(r, o, "endpoints")
            elif o["kind"] == "PodMonitor":
                check_monitor(r, o, "podMetricsEndpoints")
            else:
                check_prometheus_rule(r, o)
            continue
        if kv is None:
            continue
        errors = []
        for v in versions:
            try:
                kv.validate(o, v, strict=True)
            except kv.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                errors.append(f"k8s {v}: {path}: {e.message}")
            except Exception as e:  # SchemaNotFoundError, InvalidSchemaError, ...
                errors.append(f"k8s {v}: {type(e).__name__}: {e}")
        r.check(not errors, f"{obj_id(o)} ({root}): valid (strict) for Kubernetes {', '.join(versions)}",
                "; ".join(errors))


# ---------------------------------------------------------------------------
# 3. Policy and consistency


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"].get("name") == name)]


def container(ds: dict) -> dict:
    return ds["spec"]["template"]["spec"]["containers"][0]


def check_policy(r: Report, rendered: dict[str, list[dict]]) -> None:
    r.section("3. least privilege and consistency")
    base = rendered.get("base")
    if not base:
        r.fail("base did not render: policy not checked")
        return
    dss = find(base, "DaemonSet")
    if not r.check(len(dss) == 1, "base has exactly one DaemonSet"):
        return
    ds = dss[0]
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    sc = c.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    r.check(sc.get("privileged") in (None, False), "agent container is not privileged")
    r.check(caps.get("drop") == ["ALL"], "capabilities: drop ALL", str(caps.get("drop")))
    r.check(set(caps.get("add") or []) == REQUIRED_CAPS and len(caps.get("add") or []) == len(REQUIRED_CAPS),
            f"capabilities: add exactly {sorted(REQUIRED_CAPS)}", str(caps.get("add")))
    r.check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
    r.check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem: true")
    seccomp = (sc.get("seccompProfile") or (pod.get("securityContext") or {}).get("seccompProfile") or {})
    r.check(seccomp.get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
    r.check(not pod.get("hostPID") and not pod.get("hostIPC"), "no hostPID, no hostIPC")
    r.check(pod.get("hostNetwork") is True and pod.get("dnsPolicy") == "ClusterFirstWithHostNet",
            "hostNetwork (conntrack in the host netns) with dnsPolicy ClusterFirstWithHostNet")
    # host mounts
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = {m["name"]: m for m in c.get("volumeMounts") or []}
    host = {}
    for name, v in vols.items():
        if "hostPath" in v:
            m = mounts.get(name)
            host[v["hostPath"]["path"]] = (m["mountPath"], bool(m.get("readOnly"))) if m else None
    r.check(host == HOST_MOUNTS, "host mounts are exactly tracefs, BTF, cgroup (read-only) and bpffs",
            json.dumps(host))
    unmounted = set(vols) - set(mounts)
    r.check(not unmounted, "every volume is mounted", str(sorted(unmounted)))
    # env, args, probes, ports
    env = {e["name"]: e for e in c.get("env") or []}
    r.check(((env.get("NODE_NAME") or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
            "NODE_NAME from the downward API (spec.nodeName)")
    args = c.get("args") or []
    r.check(args[:1] == ["run"] and "--metrics-addr" in args and args[args.index("--metrics-addr") + 1] == "0.0.0.0:9464",
            "runs `egress-agent run --metrics-addr 0.0.0.0:9464`", str(args))
    ports = {p["name"]: p for p in c.get("ports") or []}
    r.check(ports.get("metrics", {}).get("containerPort") == 9464, "container port metrics = 9464")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        hg = (c.get(probe) or {}).get("httpGet") or {}
        r.check(hg.get("path") == path and hg.get("port") == "metrics", f"{probe} GET {path} on port metrics", str(hg))
    res = c.get("resources") or {}
    r.check(bool(res.get("requests")) and bool(res.get("limits")), "resource requests and limits set")
    r.check({"operator": "Exists"} in (pod.get("tolerations") or []), "tolerates every taint")
    r.check(pod.get("priorityClassName") == "system-node-critical", "priorityClassName system-node-critical")
    # image tag = workspace version
    try:
        ws = tomllib.loads((REPO / "Cargo.toml").read_text())
        version = ws["workspace"]["package"]["version"]
        r.check(c["image"].endswith(":" + version), f"image tag matches the workspace version {version}", c["image"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        r.note(f"workspace version not read ({e})")
    # names and selectors
    sa = pod.get("serviceAccountName")
    r.check(bool(find(base, "ServiceAccount", sa)), f"ServiceAccount {sa} exists")
    cm_names = {v["configMap"]["name"] for v in vols.values() if "configMap" in v}
    for cm in cm_names:
        r.check(bool(find(base, "ConfigMap", cm)), f"ConfigMap {cm} exists")
    tmpl_labels = ds["spec"]["template"]["metadata"]["labels"]
    sel = ds["spec"]["selector"]["matchLabels"]
    r.check(sel.items() <= tmpl_labels.items(), "DaemonSet selector matches its pod template")
    ns = ds["metadata"]["namespace"]
    r.check(bool(find(base, "Namespace", ns)), f"Namespace {ns} exists")
    for o in base:
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            if o["metadata"].get("namespace") != ns:
                r.fail(f"{obj_id(o)}: not in namespace {ns}")
    svc = find(base, "Service")
    if r.check(len(svc) == 1, "one Service"):
        s = svc[0]
        r.check(s["spec"].get("clusterIP") == "None", "Service is headless")
        r.check(s["spec"]["selector"].items() <= tmpl_labels.items(), "Service selects the agent pods")
        sports = {p["name"]: p for p in s["spec"]["ports"]}
        r.check(sports.get("metrics", {}).get("port") == 9464 and sports["metrics"].get("targetPort") == "metrics",
                "Service port metrics 9464 -> container port metrics")
    # RBAC
    roles = find(base, "ClusterRole")
    if r.check(len(roles) == 1, "one ClusterRole"):
        granted, verbs = set(), set()
        for rule in roles[0].get("rules") or []:
            verbs |= set(rule.get("verbs") or [])
            for g in rule.get("apiGroups") or []:
                for res_ in rule.get("resources") or []:
                    granted.add((g, res_))
        r.check(verbs == {"get", "list", "watch"}, "ClusterRole verbs are get/list/watch only", str(sorted(verbs)))
        r.check(granted == RBAC_RESOURCES, "ClusterRole covers exactly pods, services, nodes, endpointslices",
                str(sorted(granted)))
        binds = find(base, "ClusterRoleBinding")
        r.check(any(b["roleRef"]["name"] == roles[0]["metadata"]["name"]
                    and {"kind": "ServiceAccount", "name": sa, "namespace": ns} in b.get("subjects", [])
                    for b in binds), "ClusterRoleBinding binds the ClusterRole to the agent's ServiceAccount")
    # privileged overlay
    priv = rendered.get("overlays/privileged")
    if priv:
        pds = find(priv, "DaemonSet")
        psc = container(pds[0]).get("securityContext") or {} if pds else {}
        r.check(psc.get("privileged") is True and "allowPrivilegeEscalation" not in psc and "capabilities" not in psc,
                "overlay privileged: container privileged, nothing else changed in the security context", str(psc))
        same = [o for o in priv if o["kind"] != "DaemonSet"]
        r.check(canonical(same) == canonical([o for o in base if o["kind"] != "DaemonSet"]),
                "overlay privileged: only the DaemonSet differs from the base")
    # monitors select what the base provides
    pod_port_names = set(ports)
    svc_labels = svc[0]["metadata"].get("labels", {}) if svc else {}
    for name in ("monitoring", "monitoring/podmonitor"):
        for o in rendered.get(name) or []:
            if o["kind"] == "ServiceMonitor":
                spec = o["spec"]
                r.check(spec["selector"]["matchLabels"].items() <= svc_labels.items()
                        and ns in spec.get("namespaceSelector", {}).get("matchNames", []),
                        f"{obj_id(o)} selects the agent Service")
                r.check(all(e["port"] in sports for e in spec["endpoints"]), f"{obj_id(o)} scrapes a named Service port")
                r.check(svc_labels.get(spec.get("jobLabel", "")) == JOB, f"{obj_id(o)} yields job=\"{JOB}\"")
            if o["kind"] == "PodMonitor":
                spec = o["spec"]
                r.check(spec["selector"]["matchLabels"].items() <= tmpl_labels.items()
                        and ns in spec.get("namespaceSelector", {}).get("matchNames", []),
                        f"{obj_id(o)} selects the agent pods")
                r.check(all(e["port"] in pod_port_names for e in spec["podMetricsEndpoints"]),
                        f"{obj_id(o)} scrapes a named container port")
                r.check(tmpl_labels.get(spec.get("jobLabel", "")) == JOB, f"{obj_id(o)} yields job=\"{JOB}\"")
    # systemd unit
    unit = SYSTEMD_UNIT.read_text()
    kv_lines: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            kv_lines.setdefault(k.strip(), []).append(v.strip())
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        got = set(" ".join(kv_lines.get(key, [])).split())
        r.check(got == UNIT_CAPS, f"{rel(SYSTEMD_UNIT)}: {key} = {' '.join(sorted(UNIT_CAPS))}", str(sorted(got)))
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("PrivateTmp", "yes"), ("RuntimeDirectory", "egress-agent"), ("Restart", "on-failure")):
        r.check(kv_lines.get(key) == [want], f"{rel(SYSTEMD_UNIT)}: {key}={want}", str(kv_lines.get(key)))
    if shutil.which("systemd-analyze"):
        # verify needs the ExecStart binary to exist: check a copy pointing at /bin/true.
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"egress-agent-validate-{os.getpid()}.service"
        tmp.write_text(unit.replace("/usr/local/bin/egress-agent", "/bin/true"))
        try:
            out = subprocess.run(["systemd-analyze", "verify", str(tmp)], capture_output=True, text=True)
        finally:
            tmp.unlink(missing_ok=True)
        msgs = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        r.check(out.returncode == 0 and not msgs, f"systemd-analyze verify {rel(SYSTEMD_UNIT)}", " | ".join(msgs))
    else:
        r.note("systemd-analyze not found: unit syntax not verified")
    # Containerfile copies every workspace member
    try:
        members = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["members"]
        text = CONTAINERFILE.read_text()
        missing = [m for m in members if not re.search(rf"^COPY\s+{re.escape(m)}/?\s", text, re.M)]
        r.check(not missing, f"{rel(CONTAINERFILE)} copies every workspace member", str(missing))
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        r.note(f"workspace members not read ({e})")


def check_agent_flags(r: Report, agent_bin: str) -> None:
    r.section("3b. flags against the agent binary")
    out = subprocess.run([agent_bin, "run", "--help"], capture_output=True, text=True)
    if not r.check(out.returncode == 0, f"{agent_bin} run --help", out.stderr.strip()):
        return
    known = set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout))
    envs = set(re.findall(r"env: (\w+)", out.stdout)) | set(re.findall(r"\[env: (\w+)=", out.stdout))
    ds = resolve(K8S / "base")
    args = container(find(ds, "DaemonSet")[0]).get("args") or []
    used = {a.split("=")[0] for a in args if a.startswith("--")}
    env_text = GCE_ENV.read_text()
    m = re.search(r"^EGRESS_AGENT_ARGS=(.*)$", env_text, re.M)
    used |= set(re.findall(r"--[a-z][a-z0-9-]*", m.group(1) if m else ""))
    documented = set(re.findall(r"^#\s+(--[a-z][a-z0-9-]*)", env_text, re.M))
    r.check(used <= known, "DaemonSet and VM flags exist in `run --help`", str(sorted(used - known)))
    r.check(documented <= known, f"flags documented in {rel(GCE_ENV)} exist", str(sorted(documented - known)))
    env_vars = set(re.findall(r"^(EGRESS_\w+)=", env_text, re.M)) - {"EGRESS_AGENT_ARGS"}
    if envs:
        r.check(env_vars <= envs, f"{rel(GCE_ENV)} variables are read by the agent", str(sorted(env_vars - envs)))


# ---------------------------------------------------------------------------
# 4. Agent config


def check_configs(r: Report) -> None:
    r.section("4. agent config (config.yaml)")
    chains = []
    for path in CONFIGS:
        try:
            cfg = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            r.fail(f"{rel(path)}: {e}")
            continue
        problems = []
        if cfg.get("version") != 1:
            problems.append("version must be 1")
        hops = ((cfg.get("chain") or {}).get("hops")) or []
        names = [h.get("name") for h in hops]
        if not hops:
            problems.append("chain.hops is empty")
        if len(set(names)) != len(names):
            problems.append(f"duplicate hop names {names}")
        if "direct" in names:
            problems.append("'direct' is reserved for egress that bypasses the chain")
        for h in hops:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", str(h.get("name"))):
                problems.append(f"hop name {h.get('name')!r} is not a lower-case label value")
            if not h.get("match"):
                problems.append(f"hop {h.get('name')} has no match")
            m = h.get("match") or {}
            if "address" in m and not re.fullmatch(r"[0-9.]+:\d+|\[[0-9a-f:]+\]:\d+", str(m["address"])):
                problems.append(f"hop {h.get('name')}: address {m['address']!r} is not ip:port")
            if "service" in m and not {"namespace", "name", "port"} <= set(m["service"]):
                problems.append(f"hop {h.get('name')}: service needs namespace, name, port")
            if "upstream_of" in m and m["upstream_of"] not in names:
                problems.append(f"hop {h.get('name')}: upstream_of {m['upstream_of']!r} is not a hop")
        for d in (cfg.get("destinations") or {}).get("allow") or []:
            if not re.fullmatch(r"[A-Za-z0-9.-]+:\d+", str(d)):
                problems.append(f"destination {d!r} is not host:port")
        r.check(not problems, f"{rel(path)}: chain {names}", "; ".join(problems))
        chains.append(cfg.get("chain"))
    if len(chains) == 2:
        r.check(chains[0] == chains[1], "the cluster's and the VM's config describe the same chain")


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
        for args in (["check", "rules", str(RULES_FILE)], ["check", "config", str(PROM_CONFIG)]) + tuple(
                ["test", "rules", str(t)] for t in tests):
            out = subprocess.run([promtool] + args, capture_output=True, text=True)
            r.check(out.returncode == 0, f"promtool {' '.join(args[:2])} {rel(Path(args[2]))}",
                    (out.stdout + out.stderr).strip())
    elif allow_missing:
        r.note("promtool not found (apt-get install prometheus): promtool checks skipped")
    else:
        r.fail("promtool not found (apt-get install prometheus)")
    return exprs


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
        elif name in PLANNED:
            if scrape is not None and name in scrape:
                r.fail(f"{name}: listed as planned but the agent exports it now: move it to EXISTING in "
                       f"validate.py and its alerts out of {PLANNED_GROUP}")
            else:
                r.ok(f"{name}: planned, not exported yet ({where})")
        elif name in CONDITIONAL and scrape is not None and not any(n.startswith(CONDITIONAL[name]) for n in scrape):
            r.ok(f"{name}: its source ({CONDITIONAL[name]}*) is off in this scrape ({where})")
        elif scrape is not None:
            r.check(name in scrape, f"{name}: in the scrape ({where})",
                    "not in the scrape; a counter vector with no label set observed yet is absent from the "
                    "exposition: initialise its known label sets to 0 in metrics.rs, or scrape after traffic")
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
    if args.agent_bin:
        check_agent_flags(r, args.agent_bin)
    check_configs(r)
    exprs = check_rules(r, args.allow_missing_tools)
    check_metric_names(r, exprs, args.metrics_file, args.allow_missing_tools)
    print(f"\nvalidate: {r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
