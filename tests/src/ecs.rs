//! Exported lines checked against the Elastic Common Schema: every field
//! outside the agent's own `egress.*` namespace must be an ECS field (by its
//! dotted name) of the right type (`keyword`, `long`, `ip`, `date`, …), with
//! an allowed value where ECS lists them, `event.type` among those its
//! `event.category` expects. The definitions are the vendored subset of ECS
//! 9.4.0's `ecs_flat.yml` (`tests/fixtures/ecs_flat_9.4.0_subset.yml`, its
//! source and version in its header); a field the mapping writes that is not
//! in the subset fails as an unknown name. Besides ECS, only Cloud Logging's
//! `severity` and `time` may sit at the top.
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct Allowed {
    name: String,
    #[serde(default)]
    expected_event_types: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Field {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    normalize: Vec<String>,
    #[serde(default)]
    allowed_values: Vec<Allowed>,
}

/// The ECS field definitions of the fixture.
pub struct Schema {
    fields: BTreeMap<String, Field>,
}

/// Cloud Logging's `LogSeverity` names.
const SEVERITIES: &[&str] =
    &["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"];

/// The agent's own namespace: the type of each field it documents. Fields
/// not listed (added to records later) are allowed with any scalar type.
const EGRESS: &[(&str, &str)] = &[
    ("record", "string"),
    ("verdict", "string"),
    ("reason", "string"),
    ("phase", "string"),
    ("hop", "string"),
    ("leg", "string"),
    ("failed_hop", "string"),
    ("chain_id", "string"),
    ("flow_id", "string"),
    ("target", "string"),
    ("workload", "string"),
    ("unit", "string"),
    ("cgroup", "string"),
    ("dst_name", "string"),
    ("dst_class", "string"),
    ("proxy_error", "string"),
    ("proxy_via", "string"),
    ("asked_by", "string"),
    ("proxy_status", "integer"),
    ("retransmits", "integer"),
    ("syn_retransmits", "integer"),
    ("errno", "integer"),
    ("cgroup_id", "integer"),
    ("netns", "integer"),
    ("count", "integer"),
    ("answers", "integer"),
    ("sampled", "integer"),
    ("duration_ms", "number"),
    ("interval_s", "number"),
    ("synthetic", "bool"),
    ("legs", "objects"),
    ("qtypes", "strings"),
];

/// `YYYY-MM-DDTHH:MM:SS[.fff…]Z`.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && s.ends_with('Z')
        && (b.len() == 20 || (b[19] == b'.' && digits(20..b.len() - 1)))
}

fn flatten<'a>(prefix: &str, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(m) if prefix != "egress.legs" => {
            for (k, v) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&p, v, out);
            }
        }
        v => out.push((prefix.to_string(), v)),
    }
}

impl Schema {
    pub fn path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ecs_flat_9.4.0_subset.yml")
    }

    pub fn load() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(Self::path()).context("the ECS fixture")?;
        let fields = serde_saphyr::from_str(&text).context("parsing the ECS fixture")?;
        Ok(Self { fields })
    }

    /// The version the fixture says it is (`ecs.version` must match it).
    pub fn version(&self) -> &'static str {
        "9.4.0"
    }

    fn check_type(name: &str, f: &Field, v: &Value) -> Option<String> {
        let one = |v: &Value| match f.ty.as_str() {
            "keyword" | "match_only_text" | "text" | "wildcard" | "constant_keyword" => {
                v.is_string()
            }
            "long" | "integer" | "short" | "byte" => v.is_i64() || v.is_u64(),
            "float" | "double" | "scaled_float" => v.is_number(),
            "boolean" => v.is_boolean(),
            "ip" => v.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok()),
            "date" => v.as_str().is_some_and(is_rfc3339),
            _ => false,
        };
        let ok = match v {
            Value::Array(a) => f.normalize.iter().any(|n| n == "array") && a.iter().all(one),
            v => one(v),
        };
        (!ok).then(|| {
            format!(
                "{name}: {v} is not an ECS {}{}",
                f.ty,
                if v.is_array() { " (not an array field)" } else { "" }
            )
        })
    }

    /// Every problem of one exported line (none: it conforms).
    pub fn problems(&self, line: &Value) -> Vec<String> {
        let mut p = Vec::new();
        if !line.is_object() {
            return vec![format!("not a JSON object: {line}")];
        }
        let mut fields = Vec::new();
        flatten("", line, &mut fields);
        for want in ["@timestamp", "ecs.version", "event.kind", "event.category", "message"] {
            if !fields.iter().any(|(k, _)| k == want) {
                p.push(format!("{want} missing"));
            }
        }
        if line["ecs"]["version"] != self.version() {
            p.push(format!("ecs.version {} is not {}", line["ecs"]["version"], self.version()));
        }
        if line["time"] != line["@timestamp"] {
            p.push(format!("time {} differs from @timestamp {}", line["time"], line["@timestamp"]));
        }
        if !line["severity"].as_str().is_some_and(|s| SEVERITIES.contains(&s)) {
            p.push(format!("severity {} is not a Cloud Logging severity", line["severity"]));
        }
        for (name, v) in &fields {
            if name == "time" || name == "severity" {
                continue;
            }
            if let Some(own) = name.strip_prefix("egress.") {
                p.extend(egress_problem(own, v));
                continue;
            }
            let Some(f) = self.fields.get(name) else {
                p.push(format!("{name}: not an ECS field"));
                continue;
            };
            p.extend(Self::check_type(name, f, v));
            if !f.allowed_values.is_empty() {
                let vals: Vec<&Value> =
                    v.as_array().map_or_else(|| vec![*v], |a| a.iter().collect());
                for x in vals {
                    if !f.allowed_values.iter().any(|a| x.as_str() == Some(a.name.as_str())) {
                        p.push(format!("{name}: {x} is not an allowed value"));
                    }
                }
            }
        }
        // event.type: among the types its categories expect.
        if let (Some(cats), Some(types)) =
            (line["event"]["category"].as_array(), line["event"]["type"].as_array())
        {
            let expected: Vec<&str> = self.fields["event.category"]
                .allowed_values
                .iter()
                .filter(|a| cats.iter().any(|c| c.as_str() == Some(a.name.as_str())))
                .flat_map(|a| a.expected_event_types.iter().map(String::as_str))
                .collect();
            for t in types {
                if !t.as_str().is_some_and(|t| expected.contains(&t)) {
                    p.push(format!("event.type {t} is not expected with event.category {cats:?}"));
                }
            }
        }
        p
    }
}

fn egress_problem(name: &str, v: &Value) -> Option<String> {
    let Some((_, ty)) = EGRESS.iter().find(|(k, _)| *k == name) else {
        return (v.is_array() || v.is_object())
            .then(|| format!("egress.{name}: undocumented structured value {v}"));
    };
    let ok = match *ty {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "bool" => v.is_boolean(),
        "objects" => v.as_array().is_some_and(|a| a.iter().all(Value::is_object)),
        "strings" => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        _ => false,
    };
    (!ok).then(|| format!("egress.{name}: {v} is not {ty}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_validator_catches_names_types_and_values() {
        let s = Schema::load().expect("fixture");
        let good = json!({
            "@timestamp": "2026-11-21T09:12:03.456Z", "time": "2026-11-21T09:12:03.456Z",
            "severity": "ERROR", "message": "m", "ecs": {"version": "9.4.0"},
            "event": {"kind": "event", "category": ["network"], "type": ["connection", "denied"], "duration": 5},
            "source": {"ip": "10.0.0.1", "port": 4000}, "egress": {"legs": [{"hop": "a"}], "vantage": "client"},
        });
        assert_eq!(s.problems(&good), Vec::<String>::new());
        let mut bad = good;
        bad["source"]["ip"] = json!("10.0.0.300");
        bad["source"]["port"] = json!("4000");
        bad["event"]["kind"] = json!("flow");
        bad["event"]["type"] = json!(["error"]);
        bad["destination"] = json!({"hostname": "x"});
        bad["egress"]["proxy_status"] = json!("403");
        bad["severity"] = json!("FATAL");
        let p = s.problems(&bad);
        assert_eq!(p.len(), 7, "{p:#?}");
    }
}
