//! Kubernetes metadata (helper work in progress): pods on this node, services,
//! endpointslices and nodes, as a read-only index for attribution.
