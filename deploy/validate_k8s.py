"""deploy/validate.py, Kubernetes part: kustomize render (1), schemas (2),
least privilege and consistency (3), flags against the agent (3b), agent
config (4)."""
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

from validate_common import *  # noqa: F403 (constants, Report, helpers)

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
    check_seccomp(r, pod, sc)
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
    r.check(host == HOST_MOUNTS, "host mounts are exactly tracefs, BTF, cgroup, read-only (no /sys/fs/bpf)",
            json.dumps(host))
    not_rro = [m["mountPath"] for name, m in mounts.items()
               if "hostPath" in vols.get(name, {}) and m.get("recursiveReadOnly") not in RECURSIVE_READ_ONLY]
    r.check(not not_rro, f"host mounts are recursively read-only (recursiveReadOnly {' or '.join(sorted(RECURSIVE_READ_ONLY))})",
            str(not_rro))
    unmounted = set(vols) - set(mounts)
    r.check(not unmounted, "every volume is mounted", str(sorted(unmounted)))
    # env, args, probes, ports
    env = {e["name"]: e for e in c.get("env") or []}
    r.check(((env.get("NODE_NAME") or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
            "NODE_NAME from the downward API (spec.nodeName)")
    args = c.get("args") or []
    # The address, TLS and authentication: validate_exposure.py.
    r.check(args[:1] == ["run"] and "--metrics-addr" in args, "runs `egress-agent run --metrics-addr …`", str(args))
    check_export_args(r, "DaemonSet", args)
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
        r.check(verbs == RBAC_VERBS, f"ClusterRole verbs are {'/'.join(sorted(RBAC_VERBS))} only", str(sorted(verbs)))
        extra = [rule for rule in roles[0].get("rules") or [] if rule.get("resourceNames") or rule.get("nonResourceURLs")]
        r.check(not extra, "ClusterRole has no resourceNames / nonResourceURLs rules", str(extra))
        r.check(granted == RBAC_RESOURCES, "ClusterRole covers exactly pods, services, nodes, namespaces, endpointslices, networkpolicies",
                str(sorted(granted)))
        binds = find(base, "ClusterRoleBinding")
        r.check(any(b["roleRef"]["name"] == roles[0]["metadata"]["name"]
                    and {"kind": "ServiceAccount", "name": sa, "namespace": ns} in b.get("subjects", [])
                    for b in binds), "ClusterRoleBinding binds the ClusterRole to the agent's ServiceAccount")
    # no kustomization brings bpffs back (the agent pins nothing)
    bpffs = [f"{name}: {v['name']}" for name, objs in rendered.items() for o in find(objs, "DaemonSet")
             for v in o["spec"]["template"]["spec"].get("volumes") or []
             if str((v.get("hostPath") or {}).get("path", "")).rstrip("/").startswith("/sys/fs/bpf")]
    r.check(not bpffs, "no kustomization mounts the host's /sys/fs/bpf", str(bpffs))
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
    env_args = re.search(r"^EGRESS_AGENT_ARGS=(.*)$", GCE_ENV.read_text(), re.M)
    check_export_args(r, rel(GCE_ENV), (env_args.group(1) if env_args else "").split())
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("PrivateTmp", "yes"), ("RuntimeDirectory", "egress-agent"), ("Restart", "on-failure"),
                      ("StandardOutput", "journal"), ("SyslogIdentifier", "egress-agent")):
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
    # Containerfile: the scratch image `cargo xtask image` builds, consistent with the DaemonSet
    text = CONTAINERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    r.check(froms == ["scratch"], f"{rel(CONTAINERFILE)}: one stage, FROM scratch (nothing to pull)", str(froms))
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    r.check(bool(entry) and json.loads(entry.group(1)) == (c.get("command") or [])[:1],
            f"{rel(CONTAINERFILE)}: ENTRYPOINT is the DaemonSet's command", entry.group(1) if entry else "no ENTRYPOINT")
    user = re.search(r"^USER\s+(\d+)", text, re.M)
    r.check(bool(user) and int(user.group(1)) == sc.get("runAsUser", 0),
            f"{rel(CONTAINERFILE)}: USER is the DaemonSet's runAsUser", user.group(0) if user else "no USER")


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag V` or `--flag=V` (the last one given), else None."""
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def check_export_args(r: Report, where: str, args: list[str]) -> None:
    """The egress audit trail is on: failures as ECS lines on stdout (issue 22)."""
    r.check(flag_value(args, "--log-records") == "audit" and "--log-flows" not in args,
            f"{where}: --log-records audit (the audit trail on stdout, ok flows not per flow)", str(args))
    r.check(flag_value(args, "--log-format") == "ecs", f"{where}: --log-format ecs (Elastic Common Schema lines)",
            str(args))
    r.check(flag_value(args, "--log-stdout") in (None, "true"), f"{where}: records written on stdout", str(args))


def check_seccomp(r: Report, pod: dict, sc: dict) -> None:
    """The DaemonSet runs under the shipped Localhost profile (pod and
    container level), and that profile stays what tests/tests/image.rs ran."""
    for where, prof in (("pod", (pod.get("securityContext") or {}).get("seccompProfile") or {}),
                        ("container", sc.get("seccompProfile") or {})):
        r.check(prof == {"type": "Localhost", "localhostProfile": SECCOMP_PROFILE},
                f"{where} seccompProfile: Localhost {SECCOMP_PROFILE} (the shipped profile)", json.dumps(prof))
    path = SECCOMP_DIR / SECCOMP_PROFILE
    try:
        prof = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        r.fail(f"{rel(path)}: {e}")
        return
    rules = prof.get("syscalls") or []
    r.check(prof.get("defaultAction") in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS"),
            f"{rel(path)}: default action denies", str(prof.get("defaultAction")))
    r.check(bool(prof.get("architectures")) and "archMap" not in prof, f"{rel(path)}: plain OCI architectures list")
    conditional = [x["names"] for x in rules if x.get("includes") or x.get("excludes")]
    r.check(not conditional, f"{rel(path)}: no includes/excludes (containerd ignores them and would allow the rule)",
            str(conditional)[:200])
    allowed = {n for x in rules if x.get("action") == "SCMP_ACT_ALLOW" for n in x.get("names") or []}
    unconditional = {n for x in rules if x.get("action") == "SCMP_ACT_ALLOW" and not x.get("args")
                     for n in x.get("names") or []}
    r.check(SECCOMP_REQUIRED <= unconditional, f"{rel(path)}: allows {', '.join(sorted(SECCOMP_REQUIRED))}",
            str(sorted(SECCOMP_REQUIRED - unconditional)))
    bad = sorted(allowed & SECCOMP_FORBIDDEN)
    r.check(not bad, f"{rel(path)}: allows none of {len(SECCOMP_FORBIDDEN)} forbidden syscalls (mount, unshare, setns, ptrace, ...)",
            str(bad))
    clone = [x for x in rules if "clone" in (x.get("names") or []) and x.get("action") == "SCMP_ACT_ALLOW"]
    r.check(bool(clone) and all(x.get("args") for x in clone), f"{rel(path)}: clone only without namespace flags")
    gen = SECCOMP_DIR / "generate.py"
    out = subprocess.run([sys.executable, str(gen), "--check"], capture_output=True, text=True)
    if out.returncode == 2:
        r.note(f"{rel(gen)} --check skipped: {out.stderr.strip()}")
    else:
        r.check(out.returncode == 0, f"{rel(path)} is what {rel(gen)} generates", (out.stdout + out.stderr).strip())


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
