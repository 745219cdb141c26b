//! Who and where, for the enrich stage: the owner of a socket from its
//! cgroup ([`cgroup`]) and the Kubernetes index ([`kube`]), what a remote
//! address is ([`kube`], [`remote`]), and what NAT did to a flow ([`nat`]).
//! Each source is a cache the pipeline reads without blocking.
pub mod cgroup;
pub mod kube;
pub mod nat;
pub mod remote;
