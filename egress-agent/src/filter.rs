//! Which flow records a user asked to see.
use clap::Args;

use crate::{record::FlowRecord, verdict::Verdict};

#[derive(Debug, Clone, Default, Args)]
pub struct FlowFilter {
    /// Only flows with this verdict.
    #[arg(long, value_enum)]
    pub verdict: Option<Verdict>,
    /// Only flows from pods in this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// All namespaces and host processes (the default; overrides -n).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only flows from this pod (name, or UID as found in the cgroup path).
    #[arg(long)]
    pub pod: Option<String>,
}

impl FlowFilter {
    pub fn matches(&self, r: &FlowRecord) -> bool {
        if self.verdict.is_some_and(|v| v != r.verdict) {
            return false;
        }
        if !self.all_namespaces
            && let Some(ns) = &self.namespace
            && r.namespace.as_deref() != Some(ns.as_str())
        {
            return false;
        }
        if let Some(p) = &self.pod
            && r.pod.as_deref() != Some(p.as_str())
            && r.pod_uid.as_deref() != Some(p.as_str())
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let r = FlowRecord { namespace: Some("app".into()), pod: Some("web-1".into()), pod_uid: Some("u1".into()), verdict: Verdict::Failed, ..FlowRecord::default() };
        assert!(FlowFilter::default().matches(&r));
        assert!(FlowFilter { verdict: Some(Verdict::Failed), ..Default::default() }.matches(&r));
        assert!(!FlowFilter { verdict: Some(Verdict::Ok), ..Default::default() }.matches(&r));
        assert!(FlowFilter { namespace: Some("app".into()), ..Default::default() }.matches(&r));
        assert!(!FlowFilter { namespace: Some("kube-system".into()), ..Default::default() }.matches(&r));
        assert!(FlowFilter { namespace: Some("kube-system".into()), all_namespaces: true, ..Default::default() }.matches(&r));
        assert!(FlowFilter { pod: Some("web-1".into()), ..Default::default() }.matches(&r));
        assert!(FlowFilter { pod: Some("u1".into()), ..Default::default() }.matches(&r));
        assert!(!FlowFilter { pod: Some("web-2".into()), ..Default::default() }.matches(&r));
    }
}
