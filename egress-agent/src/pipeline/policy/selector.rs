//! Label selectors (`metav1.LabelSelector`) with `metav1.LabelSelectorAsSelector`
//! semantics: every `matchLabels` pair and every `matchExpressions` requirement
//! must hold (AND); an empty selector matches everything.
//!
//! | operator       | matches when                                   | `values`   |
//! |----------------|------------------------------------------------|------------|
//! | `In`           | the key is present and its value is listed     | non-empty  |
//! | `NotIn`        | the key is ABSENT, or its value is not listed  | non-empty  |
//! | `Exists`       | the key is present                             | empty      |
//! | `DoesNotExist` | the key is absent                              | empty      |
//!
//! A selector that breaks the `values` column, or uses another operator, is
//! rejected at build time (the API server refuses it too). Label key and value
//! syntax is not checked: it only changes which strings compare equal.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The label `kubernetes.io/metadata.name` the API server sets (immutably) on
/// every namespace to its name, since Kubernetes 1.21.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where a selector reads labels from.
pub(crate) trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A namespace's labels, with [`NAMESPACE_NAME_LABEL`] always equal to its
/// name (whatever the index holds, or when it holds nothing for it).
pub(crate) struct NamespaceLabels<'a> {
    pub name: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

impl Labels for NamespaceLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        if key == NAMESPACE_NAME_LABEL {
            return Some(self.name);
        }
        self.labels.and_then(|l| l.label(key))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector matching everything (`{}`).
    pub(crate) fn everything() -> Selector {
        Selector::default()
    }

    pub(crate) fn parse(sel: &LabelSelector) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for (key, value) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement { key: key.clone(), op: Op::In(vec![value.clone()]) });
        }
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let values = expr.values.clone().unwrap_or_default();
            let op = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "matchExpressions[{i}]: operator {} needs at least one value",
                        expr.operator
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "matchExpressions[{i}]: operator {} takes no values",
                        expr.operator
                    ));
                }
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(format!(
                        "matchExpressions[{i}]: unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"
                    ));
                }
            };
            requirements.push(Requirement { key: expr.key.clone(), op });
        }
        Ok(Selector { requirements })
    }

    /// `{}`: matches everything without looking at labels.
    pub(crate) fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub(crate) fn matches(&self, labels: &impl Labels) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.label(&r.key);
            match &r.op {
                Op::In(values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
                Op::NotIn(values) => value.is_none_or(|v| !values.iter().any(|x| x == v)),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(json: &str) -> Result<Selector, String> {
        Selector::parse(&serde_json::from_str::<LabelSelector>(json).expect("test selector JSON"))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn operators() {
        let api = labels(&[("app", "api"), ("tier", "web")]);
        let bare = labels(&[]);
        let cases = [
            (r#"{}"#, true, true),
            (r#"{"matchLabels":{"app":"api"}}"#, true, false),
            (r#"{"matchLabels":{"app":"api","tier":"db"}}"#, false, false),
            (
                r#"{"matchExpressions":[{"key":"app","operator":"In","values":["web","api"]}]}"#,
                true,
                false,
            ),
            (
                r#"{"matchExpressions":[{"key":"app","operator":"NotIn","values":["api"]}]}"#,
                false,
                true,
            ),
            (
                r#"{"matchExpressions":[{"key":"app","operator":"NotIn","values":["db"]}]}"#,
                true,
                true,
            ),
            (r#"{"matchExpressions":[{"key":"tier","operator":"Exists"}]}"#, true, false),
            (r#"{"matchExpressions":[{"key":"tier","operator":"DoesNotExist"}]}"#, false, true),
            (
                r#"{"matchExpressions":[{"key":"tier","operator":"Exists","values":[]}]}"#,
                true,
                false,
            ),
            // matchLabels AND matchExpressions.
            (
                r#"{"matchLabels":{"app":"api"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["web"]}]}"#,
                false,
                false,
            ),
        ];
        for (json, on_api, on_bare) in cases {
            let s = sel(json).expect("valid selector");
            assert_eq!(s.matches(&api), on_api, "{json} on api");
            assert_eq!(s.matches(&bare), on_bare, "{json} on no labels");
        }
    }

    #[test]
    fn malformed_selectors_are_rejected() {
        for json in [
            r#"{"matchExpressions":[{"key":"a","operator":"In"}]}"#,
            r#"{"matchExpressions":[{"key":"a","operator":"NotIn","values":[]}]}"#,
            r#"{"matchExpressions":[{"key":"a","operator":"Exists","values":["x"]}]}"#,
            r#"{"matchExpressions":[{"key":"a","operator":"DoesNotExist","values":["x"]}]}"#,
            r#"{"matchExpressions":[{"key":"a","operator":"in","values":["x"]}]}"#,
            r#"{"matchExpressions":[{"key":"a","operator":"Gt","values":["1"]}]}"#,
        ] {
            assert!(sel(json).is_err(), "{json}");
        }
    }

    #[test]
    fn namespace_name_label_is_synthesized() {
        let s = sel(r#"{"matchLabels":{"kubernetes.io/metadata.name":"kube-system"}}"#)
            .expect("valid selector");
        assert!(s.matches(&NamespaceLabels { name: "kube-system", labels: None }));
        let stale = labels(&[("kubernetes.io/metadata.name", "other")]);
        assert!(s.matches(&NamespaceLabels { name: "kube-system", labels: Some(&stale) }));
        assert!(!s.matches(&NamespaceLabels { name: "default", labels: None }));
    }
}
