//! A lenient object wrapper for the watcher.
//!
//! A typed `Api<Pod>` fails a whole List page (or a watch line) when one item
//! does not match the schema, so one bad object would blank the index and
//! stall the watch. [`Raw<K>`] deserializes from any JSON value and keeps it;
//! each object is decoded into `K` later, one by one, and a failure there is
//! counted as malformed. The metadata the watcher itself needs
//! (`resourceVersion`, name, namespace, uid) is read leniently.
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde_json::Value;

/// Any JSON value in place of a `K`, with its metadata as far as readable.
pub(crate) struct Raw<K> {
    pub metadata: ObjectMeta,
    pub value: Value,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Raw<K> {
    pub fn new(value: Value) -> Self {
        let metadata = lenient_meta(value.get("metadata"));
        Raw { metadata, value, _kind: PhantomData }
    }

    /// The typed object, or why it is not one.
    pub fn decode(self) -> Result<K, serde_json::Error>
    where
        K: DeserializeOwned,
    {
        serde_json::from_value(self.value)
    }
}

impl<K> Clone for Raw<K> {
    fn clone(&self) -> Self {
        Raw { metadata: self.metadata.clone(), value: self.value.clone(), _kind: PhantomData }
    }
}

impl<K> fmt::Debug for Raw<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Raw")
            .field("namespace", &self.metadata.namespace)
            .field("name", &self.metadata.name)
            .field("resource_version", &self.metadata.resource_version)
            .finish_non_exhaustive()
    }
}

impl<'de, K> Deserialize<'de> for Raw<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Raw::new)
    }
}

impl<K> kube::Resource for Raw<K>
where
    K: k8s_openapi::Resource,
{
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        K::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::VERSION.into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        K::API_VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::URL_PATH_SEGMENT.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The full `ObjectMeta` when it decodes, else the identifying strings alone.
fn lenient_meta(meta: Option<&Value>) -> ObjectMeta {
    let Some(meta) = meta else {
        return ObjectMeta::default();
    };
    if let Ok(parsed) = ObjectMeta::deserialize(meta) {
        return parsed;
    }
    let field = |name: &str| meta.get(name).and_then(Value::as_str).map(str::to_owned);
    ObjectMeta {
        name: field("name"),
        namespace: field("namespace"),
        uid: field("uid"),
        resource_version: field("resourceVersion"),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    use super::*;

    #[test]
    fn kube_raw_keeps_identity_of_bad_metadata() {
        let raw: Raw<Pod> = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7", "labels": ["not", "a", "map"]},
            "spec": {"containers": []}
        }))
        .expect("any value is a Raw");
        assert_eq!(raw.metadata.name.as_deref(), Some("p"));
        assert_eq!(raw.metadata.resource_version.as_deref(), Some("7"));
        assert!(raw.decode().is_err());

        let raw: Raw<Pod> = serde_json::from_value(json!("garbage")).expect("any value is a Raw");
        assert_eq!(raw.metadata, ObjectMeta::default());
    }
}
