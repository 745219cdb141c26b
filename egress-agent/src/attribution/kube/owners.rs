//! A pod's owning workload, from the pod alone.
//!
//! Watching ReplicaSets and Jobs cluster-wide would be exact but costs a
//! cluster-wide cache, API load and RBAC on every node. The controllers name
//! their children deterministically, so the pod is enough:
//!
//! - the Deployment controller names a ReplicaSet `<deployment>-<hash>` and
//!   labels every pod of it `pod-template-hash=<hash>`. A ReplicaSet owner whose
//!   name ends in `-<that label>` is the Deployment's; otherwise (a bare
//!   ReplicaSet, an Argo Rollout's which uses `rollouts-pod-template-hash`) it
//!   stays a ReplicaSet.
//! - the CronJob controller names a Job `<cronjob>-<scheduled time in Unix
//!   minutes>`. A Job owner whose suffix is all digits and, read as minutes,
//!   falls between 2015 and the pod's creation is the CronJob's. A hand-made
//!   Job named like that (`x-28000000`) would be taken for a CronJob's; a
//!   date-like suffix (`backup-20240101`) is not, as it reads as 2008.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::Workload;

/// 2015-01-01T00:00:00Z: no CronJob ran before; rejects date-like suffixes.
const EARLIEST_SCHEDULE_SECS: i64 = 1_420_070_400;
/// Clock skew allowed between the CronJob controller and the pod's creation.
const SKEW_SECS: i64 = 300;

/// The workload that owns a pod: its controller owner reference (or its first
/// owner when none is marked controller), with ReplicaSet → Deployment and
/// Job → CronJob resolved.
pub(crate) fn workload(meta: &ObjectMeta) -> Option<Workload> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owner = owners.iter().find(|o| o.controller == Some(true)).or_else(|| owners.first())?;
    let created = meta.creation_timestamp.as_ref().map(|t| t.0.as_second());
    Some(resolve(owner, meta.labels.as_ref().and_then(|l| l.get("pod-template-hash")), created))
}

fn resolve(
    owner: &OwnerReference,
    template_hash: Option<&String>,
    pod_created: Option<i64>,
) -> Workload {
    let group = owner.api_version.split_once('/').map_or("", |(group, _)| group);
    let name = owner.name.clone();
    match (group, owner.kind.as_str()) {
        ("apps", "ReplicaSet") => match template_hash.and_then(|h| deployment_of(&owner.name, h)) {
            Some(deployment) => Workload { kind: "Deployment".into(), name: deployment.into() },
            None => Workload { kind: "ReplicaSet".into(), name },
        },
        ("batch", "Job") => match cronjob_of(&owner.name, pod_created) {
            Some(cronjob) => Workload { kind: "CronJob".into(), name: cronjob.into() },
            None => Workload { kind: "Job".into(), name },
        },
        (_, kind) => Workload { kind: kind.into(), name },
    }
}

/// `web-7d4b9c8f6d` with hash `7d4b9c8f6d` → `web`.
fn deployment_of<'a>(replicaset: &'a str, hash: &str) -> Option<&'a str> {
    let prefix = replicaset.strip_suffix(hash)?.strip_suffix('-')?;
    (!prefix.is_empty() && !hash.is_empty()).then_some(prefix)
}

/// `nightly-report-28745160` → `nightly-report` when 28745160 minutes is a
/// plausible schedule time for a pod created at `pod_created`.
fn cronjob_of(job: &str, pod_created: Option<i64>) -> Option<&str> {
    let (prefix, suffix) = job.rsplit_once('-')?;
    if prefix.is_empty()
        || suffix.is_empty()
        || suffix.len() > 12
        || !suffix.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let scheduled = suffix.parse::<i64>().ok()?.checked_mul(60)?;
    let latest = pod_created.unwrap_or_else(now_secs) + SKEW_SECS;
    (EARLIEST_SCHEDULE_SECS..=latest).contains(&scheduled).then_some(prefix)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(api_version: &str, kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "00000000-0000-0000-0000-000000000000".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn w(kind: &str, name: &str) -> Workload {
        Workload { kind: kind.into(), name: name.into() }
    }

    // 2024-06-01T00:00:00Z
    const JUNE_2024: i64 = 1_717_200_000;

    #[test]
    fn kube_owner_replicaset_resolves_to_deployment_only_with_matching_hash() {
        let rs = owner("apps/v1", "ReplicaSet", "squid-proxy-6f9c7b8d4");
        let hash = "6f9c7b8d4".to_string();
        assert_eq!(resolve(&rs, Some(&hash), None), w("Deployment", "squid-proxy"));
        assert_eq!(resolve(&rs, None, None), w("ReplicaSet", "squid-proxy-6f9c7b8d4"));
        assert_eq!(
            resolve(&rs, Some(&"other".to_string()), None),
            w("ReplicaSet", "squid-proxy-6f9c7b8d4")
        );
        let bare = owner("apps/v1", "ReplicaSet", "6f9c7b8d4");
        assert_eq!(resolve(&bare, Some(&hash), None), w("ReplicaSet", "6f9c7b8d4"));
    }

    #[test]
    fn kube_owner_job_resolves_to_cronjob_with_plausible_schedule() {
        // 28620000 min = 2024-06-01T00:00Z
        let job = owner("batch/v1", "Job", "nightly-report-28620000");
        assert_eq!(resolve(&job, None, Some(JUNE_2024 + 30)), w("CronJob", "nightly-report"));
        // Scheduled after the pod was created: not a CronJob's.
        assert_eq!(
            resolve(&job, None, Some(JUNE_2024 - 3600)),
            w("Job", "nightly-report-28620000")
        );
        // Date-like and small suffixes are plain Jobs.
        for name in ["backup-20240101", "migrate-3", "db-migrate", "-28620000"] {
            let job = owner("batch/v1", "Job", name);
            assert_eq!(resolve(&job, None, Some(JUNE_2024)), w("Job", name), "{name}");
        }
    }

    #[test]
    fn kube_owner_other_kinds_pass_through() {
        assert_eq!(
            resolve(&owner("apps/v1", "DaemonSet", "node-agent"), None, None),
            w("DaemonSet", "node-agent")
        );
        assert_eq!(
            resolve(&owner("apps/v1", "StatefulSet", "db"), None, None),
            w("StatefulSet", "db")
        );
        assert_eq!(
            resolve(&owner("v1", "Node", "gke-node-1"), None, None),
            w("Node", "gke-node-1")
        );
        // A custom resource that happens to be called ReplicaSet is not resolved.
        let hash = "abc12".to_string();
        assert_eq!(
            resolve(&owner("example.com/v1", "ReplicaSet", "x-abc12"), Some(&hash), None),
            w("ReplicaSet", "x-abc12")
        );
    }

    #[test]
    fn kube_owner_prefers_controller_reference() {
        let mut not_controller = owner("v1", "ConfigMap", "cm");
        not_controller.controller = None;
        let meta = ObjectMeta {
            owner_references: Some(vec![not_controller, owner("apps/v1", "StatefulSet", "db")]),
            ..ObjectMeta::default()
        };
        assert_eq!(workload(&meta), Some(w("StatefulSet", "db")));
        assert_eq!(workload(&ObjectMeta::default()), None);
    }
}
