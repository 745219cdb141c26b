"""Shared by deploy/validate.py and deploy/validate_k8s.py: metric name sets,
paths, the DaemonSet policy constants and the report."""
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
# Metric names. Keep in step with egress-agent/src/sinks/metrics.rs (and the
# self-metrics registered beside their components).

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
    "egress_program_runs_skipped_total",
    "egress_flows_tracked",
    "egress_kernel_flows_tracked",
    "egress_kernel_flows_counted_total",
    "egress_kernel_aggregate_full_total",
    "egress_build_info",
    "egress_http_rejected_total",
    "egress_http_connections",
    "egress_http_tls_reloads_total",
}

# Exported only while their source runs: the Kubernetes watch (--kube, in a
# cluster), conntrack (--conntrack) and the proxy chain (--config with hops:
# from the first flow through a hop). A scrape of an agent without that
# source lacks them; with --metrics-file they must be in the scrape only if
# the source is on in it: some metric with that prefix, or for CHAIN_SOURCE
# some series with a non-empty hop label.
CHAIN_SOURCE = "hop="
CONDITIONAL = {
    "egress_proxy_tunnels_total": CHAIN_SOURCE,   # {hop, status, target}
    "egress_hop_failures_total": CHAIN_SOURCE,    # {hop, reason}
    "egress_hop_connects_total": CHAIN_SOURCE,    # {hop, from, result, reason}
    "egress_hop_request_failures_total": CHAIN_SOURCE,  # {hop, reason, namespace, workload}
    "egress_hop_lookup_failures_total": "egress_hop_lookup_failures_total",  # {hop, namespace, workload}: after a client's failed lookup of a hop name
    # The hop vantage: only on a machine where a hop accepted a client
    # connection on a capture port (and, for failures, one failed).
    "egress_hop_accepted_total": "egress_hop_accepted_total",  # {hop, verdict, reason}
    "egress_hop_vantage_failures_total": "egress_hop_vantage_failures_total",  # {hop, reason}
    "egress_kube_watch_up": "egress_kube_",
    # Only with `probes:` configured.
    "egress_probe_success": "egress_probe_",  # {target}
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
PLANNED: set[str] = set()
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
# Each read-only, and recursively so (tests/tests/image.rs shows why).
# No bpffs: the agent pins nothing.
HOST_MOUNTS = {  # host path -> (container path, read-only)
    "/sys/kernel/tracing": ("/sys/kernel/tracing", True),
    "/sys/kernel/btf": ("/sys/kernel/btf", True),
    "/sys/fs/cgroup": ("/sys/fs/cgroup", True),
}
RECURSIVE_READ_ONLY = {"IfPossible", "Enabled"}
RBAC_RESOURCES = {("", "pods"), ("", "services"), ("", "nodes"), ("", "namespaces"),
                  ("discovery.k8s.io", "endpointslices"), ("networking.k8s.io", "networkpolicies")}
# The agent's watchers list then watch (egress-agent/src/attribution/kube/informer.rs) and
# `check` lists one object of each; nothing gets an object by name.
RBAC_VERBS = {"list", "watch"}
# The Localhost seccomp profile the DaemonSet names, shipped in deploy/seccomp/
# (generate.py derives it). Installed as /var/lib/kubelet/seccomp/<name>.
SECCOMP_PROFILE = "egress-agent.json"
SECCOMP_DIR = DEPLOY / "seccomp"
# Syscalls the profile must allow (the agent cannot load without them)...
SECCOMP_REQUIRED = {"bpf", "perf_event_open"}
# ...and may never allow: they need capabilities this container does not have
# or reach what no namespace isolates (mounts, namespaces, other processes'
# memory, modules, kexec, the keyring, file handles).
SECCOMP_FORBIDDEN = {
    "mount", "umount", "umount2", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree",
    "mount_setattr", "pivot_root", "unshare", "setns", "clone3", "ptrace", "process_vm_readv",
    "process_vm_writev", "pidfd_getfd", "kcmp", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "keyctl", "add_key", "request_key", "open_by_handle_at",
    "name_to_handle_at", "reboot", "swapon", "swapoff", "syslog", "userfaultfd", "acct", "chroot",
    "settimeofday", "clock_settime", "iopl", "ioperm",
}
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
