#!/usr/bin/env python3
"""Generate deploy/seccomp/egress-agent.json, the agent's seccomp profile.

  python3 deploy/seccomp/generate.py            write the profile
  python3 deploy/seccomp/generate.py --check    exit 1 if the file differs

Origin. The base is the default profile of Debian 12's container tools
(/usr/share/containers/seccomp.json, package golang-github-containers-common
0.50, which podman 4.3 uses), itself derived from Docker's default. That
file is conditional: its rules carry `includes`/`excludes` on capabilities
and architectures, which Docker, podman and CRI-O evaluate but containerd
does not (containerd reads a Localhost profile as plain OCI `LinuxSeccomp`
and would ignore the conditions, allowing every conditional rule). So the
profile is resolved here, once, for the one container it is for:

- capabilities: exactly the DaemonSet's `capabilities.add` (read from
  deploy/kubernetes/base/daemonset.yaml), so the rules gated on CAP_SYS_ADMIN
  and friends resolve to their deny side;
- architectures: x86_64 and aarch64 only (the agent is a 64-bit static
  binary; no 32-bit compat syscalls are allowed);
- plus `bpf` and `perf_event_open`. Docker (since 22.06) and containerd
  (since 1.7) allow them when the container has CAP_BPF / CAP_PERFMON; this
  container always has both (the kernel still checks the capabilities on
  every call). The base file allows them only with CAP_SYS_ADMIN, which is
  why `egress-agent check` fails under podman's default ("failed to create
  map");
- minus syscalls the base allows unconditionally though Docker's and
  containerd's defaults allow them only with a capability this container
  does not have (REMOVED below): they answer EPERM, as in those defaults;
- `clone` only without namespace flags and `clone3` answering ENOSYS (so a
  libc falls back to `clone`), as containerd's default does without
  CAP_SYS_ADMIN.

The result is plain OCI format (no conditions), read alike by containerd,
CRI-O, podman and Docker. Unlisted syscalls get the base's default answer,
ENOSYS.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("generate.py needs PyYAML: pip install pyyaml")

HERE = Path(__file__).resolve().parent
DEPLOY = HERE.parent
SOURCE = Path("/usr/share/containers/seccomp.json")
OUTPUT = HERE / "egress-agent.json"
DAEMONSET = DEPLOY / "kubernetes" / "base" / "daemonset.yaml"

# (Go architecture name used by the base's `includes.arches`, seccomp arch)
ARCHES = [("amd64", "SCMP_ARCH_X86_64"), ("arm64", "SCMP_ARCH_AARCH64")]

ADDED = {
    "bpf": "CAP_BPF",
    "perf_event_open": "CAP_PERFMON",
}

# Allowed unconditionally by the base; Docker's / containerd's defaults gate
# them on a capability that this container does not have.
REMOVED = {
    # CAP_SYS_ADMIN: mounts and namespaces
    "mount": "CAP_SYS_ADMIN", "umount": "CAP_SYS_ADMIN", "umount2": "CAP_SYS_ADMIN",
    "fsopen": "CAP_SYS_ADMIN", "fsconfig": "CAP_SYS_ADMIN", "fsmount": "CAP_SYS_ADMIN",
    "fspick": "CAP_SYS_ADMIN", "move_mount": "CAP_SYS_ADMIN", "open_tree": "CAP_SYS_ADMIN",
    "mount_setattr": "CAP_SYS_ADMIN", "pivot_root": "CAP_SYS_ADMIN",
    "unshare": "CAP_SYS_ADMIN", "setns": "CAP_SYS_ADMIN", "name_to_handle_at": "CAP_SYS_ADMIN",
    # CAP_SYS_PTRACE: other processes' memory
    "ptrace": "CAP_SYS_PTRACE", "process_vm_readv": "CAP_SYS_PTRACE",
    "process_vm_writev": "CAP_SYS_PTRACE", "pidfd_getfd": "CAP_SYS_PTRACE",
    # others
    "reboot": "CAP_SYS_BOOT",
    "syslog": "CAP_SYSLOG",
    "mbind": "CAP_SYS_NICE", "set_mempolicy": "CAP_SYS_NICE", "get_mempolicy": "CAP_SYS_NICE",
    # the kernel keyring is not namespaced (Docker denies it to every container)
    "keyctl": "none",
    # the generic multiplexer of some architectures
    "syscall": "none",
}

NS_FLAGS = 0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x02000000
ENOSYS, EPERM = 38, 1


def daemonset_caps() -> set[str]:
    for doc in yaml.safe_load_all(DAEMONSET.read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            c = doc["spec"]["template"]["spec"]["containers"][0]
            return {"CAP_" + x for x in ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []}
    raise SystemExit(f"no DaemonSet in {DAEMONSET}")


def applies(rule: dict, caps: set[str]) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    go = {a for a, _ in ARCHES}
    if inc.get("arches") and not set(inc["arches"]) & go:
        return False
    if exc.get("arches") and go <= set(exc["arches"]):
        return False
    if inc.get("minKernel"):
        raise SystemExit(f"rule {rule['names']} needs a kernel version: not resolved by this generator")
    return True


def generate(base: dict, caps: set[str]) -> dict:
    allow: set[str] = set()
    eperm: set[str] = set()
    with_args: list[dict] = []
    for rule in base["syscalls"]:
        if not applies(rule, caps):
            continue
        names = set(rule["names"])
        if rule.get("args"):
            if names & (set(REMOVED) | set(ADDED)):
                raise SystemExit(f"argument rule on {names}: resolve by hand")
            out = {"names": sorted(names), "action": rule["action"], "args": rule["args"]}
            if rule["action"] == "SCMP_ACT_ERRNO":
                out["errnoRet"] = rule.get("errnoRet", EPERM)
            if out not in with_args:  # the base repeats one socket rule
                with_args.append(out)
        elif rule["action"] == "SCMP_ACT_ALLOW":
            allow |= names
        elif rule["action"] == "SCMP_ACT_ERRNO" and rule.get("errnoRet", EPERM) == EPERM:
            eperm |= names
        else:
            raise SystemExit(f"rule {rule['names']} ({rule['action']}): not resolved by this generator")
    allow = (allow - set(REMOVED) - {"clone", "clone3"}) | set(ADDED)
    eperm = (eperm | set(REMOVED)) - allow
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": base.get("defaultErrnoRet", ENOSYS),
        "architectures": [a for _, a in ARCHES],
        "syscalls": [
            {"names": sorted(allow), "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            *with_args,
            {"names": sorted(eperm), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        ],
    }


def render(profile: dict) -> str:
    return json.dumps(profile, indent=2) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    ap.add_argument("--source", type=Path, default=SOURCE, help=f"base profile (default {SOURCE})")
    a = ap.parse_args()
    if not a.source.exists():
        print(f"{a.source} not found (Debian: apt-get install golang-github-containers-common)", file=sys.stderr)
        return 2
    text = render(generate(json.loads(a.source.read_text()), daemonset_caps()))
    if a.check:
        same = OUTPUT.exists() and OUTPUT.read_text() == text
        print(f"{OUTPUT.name}: {'up to date' if same else 'differs from its generation: run deploy/seccomp/generate.py'}")
        return 0 if same else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
