//! Conntrack/NAT view (helper work in progress): ctnetlink NEW/DESTROY events
//! in the configured network namespaces, indexed by original tuple.
