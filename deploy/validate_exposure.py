"""deploy/validate.py, metrics exposure and upgrades (3c): the metrics port is
bound to the node's IP, served over TLS, /metrics behind client certificates
or a bearer token, the probes on HTTPS; the ServiceMonitor, PodMonitor and the
VM's Prometheus job scrape it that way; the VM's agent likewise; the
DaemonSet's rolling update never surges (hostNetwork + hostPort).
tests/tests/deploy_least_exposure.rs makes each of these regress on a copy of
deploy/ and checks that this fails, naming the check."""
from __future__ import annotations

import re
from typing import Any

try:
    import yaml
except ImportError:  # pragma: no cover
    raise SystemExit("validate.py needs PyYAML: pip install pyyaml kubernetes-validate")

from validate_common import GCE_ENV, PROM_CONFIG, JOB, Report, obj_id, rel

METRICS_PORT = 9464
# The name the agents' server certificate carries and the monitors verify
# (agents listen on node IPs, which no certificate can list in advance).
SERVER_NAME = "egress-agent.egress-observer.svc"
SECRET_REF = {"name", "key"}
# Prometheus Operator TLSConfig (ServiceMonitor) / SafeTLSConfig (PodMonitor).
TLS_FIELDS = {"ca", "cert", "keySecret", "serverName", "insecureSkipVerify", "minVersion", "maxVersion",
              "caFile", "certFile", "keyFile"}


def arg(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def secret_ref(v: Any) -> bool:
    """{secret: {name, key}} (or a configMap for a CA)."""
    return isinstance(v, dict) and any(
        isinstance(v.get(k), dict) and SECRET_REF <= set(v[k]) for k in ("secret", "configMap"))


def check_exposure(r: Report, rendered: dict[str, list[dict]]) -> None:
    r.section("3c. metrics exposure and upgrades")
    base = rendered.get("base") or []
    dss = [o for o in base if o.get("kind") == "DaemonSet"]
    if not r.check(len(dss) == 1, "base has one DaemonSet (exposure checks)"):
        return
    ds = dss[0]
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = [str(a) for a in c.get("args") or []]
    env = {e["name"]: e for e in c.get("env") or []}
    addr = arg(args, "--metrics-addr") or ""
    r.check(addr == f"$(HOST_IP):{METRICS_PORT}",
            f"metrics port bound to the node's IP only (--metrics-addr $(HOST_IP):{METRICS_PORT}), not 0.0.0.0", addr)
    host_ip = ((env.get("HOST_IP") or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
    r.check(host_ip == "status.hostIP", "HOST_IP from the downward API (status.hostIP)", str(host_ip))
    # TLS and authentication, from files of a Secret volume
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    secret_dirs = [m["mountPath"].rstrip("/") + "/" for m in c.get("volumeMounts") or []
                   if "secret" in vols.get(m["name"], {}) and m.get("readOnly")]
    files = {f: arg(args, f) for f in ("--metrics-tls-cert", "--metrics-tls-key", "--metrics-client-ca",
                                       "--metrics-token-file")}
    r.check(bool(files["--metrics-tls-cert"] and files["--metrics-tls-key"]),
            "metrics port served over TLS (--metrics-tls-cert, --metrics-tls-key)", str(files))
    client_ca, token = bool(files["--metrics-client-ca"]), bool(files["--metrics-token-file"])
    r.check(client_ca or token,
            "/metrics authenticated (--metrics-client-ca or --metrics-token-file)", str(files))
    outside = [f"{k} {v}" for k, v in files.items() if v and not any(v.startswith(d) for d in secret_dirs)]
    r.check(not outside, "TLS and credential files come from a read-only Secret volume", str(outside))
    wait = arg(args, "--metrics-bind-wait")
    r.check(wait is None or not re.fullmatch(r"0+(\.0*)?(ms|s|m|h)?", wait),
            "--metrics-bind-wait not 0 (the new agent waits for the old one's port)", str(wait))
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        hg = (c.get(probe) or {}).get("httpGet") or {}
        r.check(hg.get("scheme") == "HTTPS" and hg.get("path") in ("/healthz", "/readyz"),
                f"{probe}: HTTPS on an unauthenticated path", str(hg))
    ports = {p.get("name"): p for p in c.get("ports") or []}
    m = ports.get("metrics") or {}
    r.check(m.get("containerPort") == METRICS_PORT and m.get("hostPort") == METRICS_PORT,
            f"metrics port declares hostPort {METRICS_PORT} (what the scheduler sees)", str(m))
    # upgrade strategy
    us = ds["spec"].get("updateStrategy") or {}
    ru = us.get("rollingUpdate") or {}
    surge = str(ru.get("maxSurge", "MISSING"))
    unavailable = str(ru.get("maxUnavailable", "1"))
    r.check(us.get("type") == "RollingUpdate" and surge in ("0", "0%"),
            "updateStrategy RollingUpdate with maxSurge 0 (hostNetwork + hostPort: a surge pod never schedules)",
            str(us))
    r.check(unavailable not in ("0", "0%"), "maxUnavailable > 0 (else no rollout can start)", unavailable)
    # the monitors
    monitors = [(name, o) for name in ("monitoring", "monitoring/podmonitor")
                for o in rendered.get(name) or [] if o.get("kind") in ("ServiceMonitor", "PodMonitor")]
    r.check(len(monitors) == 2, "a ServiceMonitor and a PodMonitor", str([obj_id(o) for _, o in monitors]))
    for _, o in monitors:
        key = "endpoints" if o["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
        for i, ep in enumerate(o["spec"].get(key) or []):
            check_endpoint(r, f"{obj_id(o)} {key}[{i}]", ep, client_ca, token)
    check_vm(r)


def check_endpoint(r: Report, where: str, ep: dict, client_ca: bool, token: bool) -> None:
    tls = ep.get("tlsConfig") or {}
    r.check(ep.get("scheme") == "https", f"{where}: scheme https", str(ep.get("scheme")))
    extra = set(tls) - TLS_FIELDS
    r.check(not extra, f"{where}: tlsConfig fields known", str(sorted(extra)))
    r.check(tls.get("serverName") == SERVER_NAME and secret_ref(tls.get("ca")) and not tls.get("insecureSkipVerify"),
            f"{where}: verifies the agent (tlsConfig.ca from a Secret, serverName {SERVER_NAME})", str(tls))
    has_cert = secret_ref(tls.get("cert")) and isinstance(tls.get("keySecret"), dict) \
        and SECRET_REF <= set(tls["keySecret"])
    auth = ep.get("authorization") or {}
    has_token = isinstance(auth.get("credentials"), dict) and SECRET_REF <= set(auth["credentials"])
    r.check((client_ca and has_cert) or (token and has_token),
            f"{where}: presents what the agent asks for ({'client certificate' if client_ca else 'bearer token'})",
            f"cert {has_cert}, token {has_token}")


def env_file(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", text, re.M))


def check_vm(r: Report) -> None:
    env = env_file(GCE_ENV.read_text())
    addr = env.get("EGRESS_METRICS_ADDR", "")
    r.check(bool(addr) and not addr.startswith(("0.0.0.0:", "[::]:", ":")),
            f"{rel(GCE_ENV)}: metrics bound to the VM's address, not every address", addr)
    r.check(bool(env.get("EGRESS_METRICS_TLS_CERT") and env.get("EGRESS_METRICS_TLS_KEY")),
            f"{rel(GCE_ENV)}: metrics over TLS")
    vm_ca, vm_token = bool(env.get("EGRESS_METRICS_CLIENT_CA")), bool(env.get("EGRESS_METRICS_TOKEN_FILE"))
    r.check(vm_ca or vm_token, f"{rel(GCE_ENV)}: /metrics authenticated (client CA or token file)")
    try:
        prom = yaml.safe_load(PROM_CONFIG.read_text())
    except (OSError, yaml.YAMLError) as e:
        r.fail(f"{rel(PROM_CONFIG)}: {e}")
        return
    jobs = [j for j in prom.get("scrape_configs") or [] if j.get("job_name") == JOB]
    if not r.check(len(jobs) == 1, f"{rel(PROM_CONFIG)}: one job {JOB}"):
        return
    j = jobs[0]
    tls = j.get("tls_config") or {}
    auth = j.get("authorization") or {}
    r.check(j.get("scheme") == "https" and bool(tls.get("ca_file")) and tls.get("server_name") == SERVER_NAME
            and not tls.get("insecure_skip_verify"),
            f"{rel(PROM_CONFIG)}: job {JOB} scrapes https and verifies the agent", str(j.get("scheme")) + str(tls))
    r.check((vm_ca and bool(tls.get("cert_file") and tls.get("key_file")))
            or (vm_token and bool(auth.get("credentials_file"))),
            f"{rel(PROM_CONFIG)}: job {JOB} presents what the VM's agent asks for", str(tls))
