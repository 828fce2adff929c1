//! JSON decoding as Go's `encoding/json` does it for a Go CNI plugin, so
//! that we accept exactly what upstream accepts. Runtimes depend on it:
//! containerd's go-cni sends `HostPort`, `ContainerPort`… because its
//! struct has no JSON tags, and every Go plugin takes them.
//!
//! Go's rules, as implemented here:
//! - an object key names a struct field exactly or, failing that, equal
//!   under Unicode simple case folding (`hostport`, `HOSTPORT`, `hoſtPort`);
//! - unknown keys are ignored (serde's derive does that for us);
//! - a key given twice takes the last value; an object given twice for a
//!   struct or map field fills the same value (Go decodes into it again);
//! - `null` for a field leaves it unset;
//! - an integer field takes only an integer literal (`8080.5`, `"8080"`
//!   and `1e3` are refused).
//!
//! [`GoValue`] keeps every object entry in document order, duplicates
//! included (serde_json's `Value` would merge them before we could see
//! which came last). As a serde [`Deserializer`] it folds an object's keys
//! onto the field names serde's derive hands to `deserialize_struct`, so
//! our config structs keep plain `#[serde(rename = "hostPort")]` names.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Number, Value};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON at all (serde_json's message, with line and column).
    #[error(transparent)]
    Syntax(serde_json::Error),
    /// JSON of the wrong shape, with the path of the value that failed
    /// (`runtimeConfig.portMappings[0].hostPort: invalid type: …`).
    #[error(transparent)]
    Shape(serde_path_to_error::Error<serde_json::Error>),
}

/// Decodes `bytes` into `T` with Go's rules.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let value: GoValue = serde_json::from_slice(bytes).map_err(Error::Syntax)?;
    decode(value)
}

/// Decodes a parsed document into `T` with Go's rules.
pub fn decode<T: DeserializeOwned>(value: GoValue) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(Error::Shape)
}

/// A parsed JSON document whose objects keep every entry in order.
#[derive(Debug, Clone, PartialEq)]
pub enum GoValue {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<GoValue>),
    Object(Vec<(String, GoValue)>),
}

impl<'de> de::Deserialize<'de> for GoValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<GoValue, D::Error> {
        d.deserialize_any(GoValueVisitor)
    }
}

struct GoValueVisitor;

impl<'de> Visitor<'de> for GoValueVisitor {
    type Value = GoValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<GoValue, E> {
        Ok(GoValue::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<GoValue, E> {
        Ok(GoValue::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<GoValue, E> {
        Ok(GoValue::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<GoValue, E> {
        Ok(GoValue::Number(n.into()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<GoValue, E> {
        Number::from_f64(n)
            .map(GoValue::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, s: &str) -> Result<GoValue, E> {
        Ok(GoValue::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<GoValue, E> {
        Ok(GoValue::String(s))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<GoValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(GoValue::Array(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<GoValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(GoValue::Object(entries))
    }
}

impl GoValue {
    fn unexpected(&self) -> de::Unexpected<'_> {
        match self {
            GoValue::Null => de::Unexpected::Unit,
            GoValue::Bool(b) => de::Unexpected::Bool(*b),
            GoValue::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => de::Unexpected::Unsigned(u),
                (None, Some(i), _) => de::Unexpected::Signed(i),
                (.., f) => de::Unexpected::Float(f.unwrap_or(f64::NAN)),
            },
            GoValue::String(s) => de::Unexpected::Str(s),
            GoValue::Array(_) => de::Unexpected::Seq,
            GoValue::Object(_) => de::Unexpected::Map,
        }
    }
}

/// The entries a Go struct with `fields` decodes from `entries`: keys
/// folded onto field names, the last occurrence of each kept, nulls
/// leaving the field unset.
fn struct_entries(entries: Vec<(String, GoValue)>, fields: &[&str]) -> Vec<(String, GoValue)> {
    let mut out: Vec<(String, GoValue)> = Vec::new();
    for (key, value) in entries {
        let name = field_for(&key, fields).map_or(key, str::to_string);
        let earlier = out
            .iter()
            .position(|(k, _)| *k == name)
            .map(|i| out.remove(i).1);
        match (earlier, value) {
            (_, GoValue::Null) => {}
            (Some(GoValue::Object(mut first)), GoValue::Object(then)) => {
                first.extend(then);
                out.push((name, GoValue::Object(first)));
            }
            (_, value) => out.push((name, value)),
        }
    }
    out
}

/// Map and `interface{}` targets: keys as written, the last one wins.
fn map_entries(entries: Vec<(String, GoValue)>) -> Vec<(String, GoValue)> {
    let mut out: Vec<(String, GoValue)> = Vec::new();
    for (key, value) in entries {
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    }
    out
}

/// The field a key names: exact first, else the first that folds equal.
fn field_for<'f>(key: &str, fields: &[&'f str]) -> Option<&'f str> {
    fields
        .iter()
        .find(|f| **f == key)
        .or_else(|| fields.iter().find(|f| equal_fold(f, key)))
        .copied()
}

/// `bytes.EqualFold`: equal under Unicode simple case folding.
pub fn equal_fold(a: &str, b: &str) -> bool {
    a.chars().map(fold).eq(b.chars().map(fold))
}

fn fold(c: char) -> char {
    match c {
        // Turkic dotless/dotted i have no simple folding onto i.
        'ı' | 'İ' => c,
        _ => {
            let mut upper = c.to_uppercase();
            let (Some(u), None) = (upper.next(), upper.next()) else {
                return c;
            };
            let mut lower = u.to_lowercase();
            match (lower.next(), lower.next()) {
                (Some(l), None) => l,
                _ => c,
            }
        }
    }
}

fn visit_object<'de, V: Visitor<'de>>(
    entries: Vec<(String, GoValue)>,
    visitor: V,
) -> Result<V::Value, serde_json::Error> {
    let mut map = MapDeserializer::new(entries.into_iter());
    let out = visitor.visit_map(&mut map)?;
    map.end()?;
    Ok(out)
}

fn visit_array<'de, V: Visitor<'de>>(
    items: Vec<GoValue>,
    visitor: V,
) -> Result<V::Value, serde_json::Error> {
    let mut seq = SeqDeserializer::new(items.into_iter());
    let out = visitor.visit_seq(&mut seq)?;
    seq.end()?;
    Ok(out)
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for GoValue {
    type Deserializer = GoValue;
    fn into_deserializer(self) -> GoValue {
        self
    }
}

impl<'de> de::Deserializer<'de> for GoValue {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            GoValue::Null => visitor.visit_unit(),
            GoValue::Bool(b) => visitor.visit_bool(b),
            GoValue::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => visitor.visit_u64(u),
                (None, Some(i)) => visitor.visit_i64(i),
                _ => visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN)),
            },
            GoValue::String(s) => visitor.visit_string(s),
            GoValue::Array(items) => visit_array(items, visitor),
            GoValue::Object(entries) => visit_object(map_entries(entries), visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            GoValue::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            GoValue::Object(entries) => visit_object(struct_entries(entries, fields), visitor),
            // Go leaves a struct as it was for null: all fields unset.
            GoValue::Null => visit_object(Vec::new(), visitor),
            // Not a tuple either: Go refuses an array for a struct.
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            GoValue::Object(entries) => visit_object(map_entries(entries), visitor),
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            GoValue::Array(items) => visit_array(items, visitor),
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct enum identifier
    }
}

/// The field names of a Go struct, and the structs nested under some of
/// them (an object, or each element of a list). For JSON we keep as a
/// value rather than decode into a struct (prevResult: its unknown fields
/// pass through to our output).
pub struct Fields {
    pub names: &'static [&'static str],
    pub nested: &'static [(&'static str, &'static Fields)],
}

/// Renames the keys of `value` (an object, or a list of objects) that a Go
/// struct with `fields` would take to the field's own name; keys it would
/// not take stay as written. `value` came from a Go `map[string]interface{}`
/// upstream, which `json.Marshal` writes with sorted keys before the struct
/// decode sees them: of two keys naming one field, the later in byte order
/// wins.
pub fn fold_keys(value: &mut Value, fields: &Fields) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| fold_keys(v, fields)),
        Value::Object(map) => {
            let mut folded = Map::new();
            let mut winner: Vec<(&str, String)> = Vec::new();
            for (key, v) in std::mem::take(map) {
                let Some(name) = field_for(&key, fields.names) else {
                    folded.insert(key, v);
                    continue;
                };
                match winner.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, seen)) if *seen > key => continue,
                    Some((_, seen)) => *seen = key,
                    None => winner.push((name, key)),
                }
                folded.insert(name.to_string(), v);
            }
            for (name, nested) in fields.nested {
                if let Some(v) = folded.get_mut(*name) {
                    fold_keys(v, nested);
                }
            }
            *map = folded;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq, Default)]
    struct Mapping {
        #[serde(rename = "hostPort", default)]
        host_port: i64,
        #[serde(rename = "hostIP", default)]
        host_ip: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Conf {
        #[serde(default)]
        name: String,
        #[serde(rename = "runtimeConfig", default)]
        runtime_config: Option<Runtime>,
        #[serde(default)]
        caps: Option<BTreeMap<String, bool>>,
        #[serde(default)]
        raw: Option<Value>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Runtime {
        #[serde(rename = "portMappings", default)]
        port_mappings: Option<Vec<Mapping>>,
        #[serde(default)]
        snat: Option<bool>,
    }

    fn conf(text: &str) -> Result<Conf, String> {
        from_slice(text.as_bytes()).map_err(|e| e.to_string())
    }

    fn mappings(text: &str) -> Vec<Mapping> {
        conf(text)
            .expect("decodes")
            .runtime_config
            .and_then(|r| r.port_mappings)
            .expect("mappings")
    }

    #[rstest]
    #[case::exact(r#"{"hostPort":1}"#, 1)]
    #[case::go_cni_capitalised(r#"{"HostPort":2}"#, 2)]
    #[case::all_caps(r#"{"HOSTPORT":3}"#, 3)]
    #[case::long_s_folds_to_s(r#"{"hoſtPort":4}"#, 4)]
    #[case::last_of_two_spellings_wins(r#"{"hostPort":1,"HostPort":5}"#, 5)]
    #[case::exact_then_fold_order_is_document_order(r#"{"HostPort":1,"hostPort":6}"#, 6)]
    #[case::same_key_twice(r#"{"hostPort":1,"hostPort":7}"#, 7)]
    #[case::null_leaves_unset(r#"{"hostPort":null}"#, 0)]
    #[case::missing_is_zero(r#"{}"#, 0)]
    fn keys_fold_like_go(#[case] mapping: &str, #[case] port: i64) {
        let text = format!(r#"{{"runtimeConfig":{{"portMappings":[{mapping}]}}}}"#);
        assert_eq!(mappings(&text)[0].host_port, port);
    }

    #[test]
    fn kelvin_sign_folds_to_k_and_dotless_i_does_not_fold_to_i() {
        assert!(equal_fold("K", "\u{212A}"));
        assert!(equal_fold("hostIP", "HOSTip"));
        assert!(!equal_fold("hostIP", "hostıP"));
        let m = &mappings(r#"{"runtimeConfig":{"portMappings":[{"hostıP":"x"}]}}"#)[0];
        assert_eq!(m.host_ip, None);
    }

    #[test]
    fn an_object_given_twice_fills_the_same_struct() {
        let c = conf(
            r#"{"runtimeConfig":{"portMappings":[{"hostPort":1}]},"RuntimeConfig":{"snat":false}}"#,
        )
        .expect("decodes");
        let r = c.runtime_config.expect("runtime config");
        assert_eq!(r.port_mappings.map(|m| m.len()), Some(1));
        assert_eq!(r.snat, Some(false));
    }

    #[test]
    fn unknown_keys_are_ignored_and_map_keys_stay_exact() {
        let c = conf(r#"{"Name":"n","whatever":[1,{"a":2}],"caps":{"portMappings":true,"PortMappings":false}}"#)
            .expect("decodes");
        assert_eq!(c.name, "n");
        let caps = c.caps.expect("caps");
        assert_eq!(caps.get("portMappings"), Some(&true));
        assert_eq!(caps.get("PortMappings"), Some(&false));
    }

    #[test]
    fn raw_values_take_the_last_duplicate_whole() {
        let c = conf(r#"{"raw":{"a":{"x":1},"a":{"y":2}}}"#).expect("decodes");
        assert_eq!(c.raw, Some(serde_json::json!({"a": {"y": 2}})));
    }

    #[rstest]
    #[case::fraction(r#"8080.5"#, "invalid type: floating point `8080.5`, expected i64")]
    #[case::exponent(r#"1e3"#, "invalid type: floating point `1000.0`, expected i64")]
    #[case::string(r#""8080""#, "invalid type: string \"8080\", expected i64")]
    #[case::bool(r#"true"#, "invalid type: boolean `true`, expected i64")]
    #[case::too_big(r#"18446744073709551616"#, "expected i64")]
    fn integer_fields_take_integer_literals_only(#[case] port: &str, #[case] want: &str) {
        let text = format!(r#"{{"runtimeConfig":{{"portMappings":[{{"HostPort":{port}}}]}}}}"#);
        let e = conf(&text).expect_err("refused");
        assert!(
            e.starts_with("runtimeConfig.portMappings[0].hostPort: "),
            "{e}"
        );
        assert!(e.contains(want), "{e}");
    }

    #[rstest]
    #[case::array_for_struct(r#"{"runtimeConfig":[1]}"#)]
    #[case::string_for_list(r#"{"runtimeConfig":{"portMappings":"x"}}"#)]
    #[case::list_for_map(r#"{"caps":[]}"#)]
    #[case::number_for_bool(r#"{"caps":{"a":1}}"#)]
    fn wrong_shapes_are_refused(#[case] text: &str) {
        assert!(conf(text).is_err(), "{text}");
    }

    static IP: Fields = Fields {
        names: &["address", "interface"],
        nested: &[],
    };
    static RESULT: Fields = Fields {
        names: &["cniVersion", "ips"],
        nested: &[("ips", &IP)],
    };

    #[test]
    fn fold_keys_renames_known_keys_keeps_unknown_ones() {
        let mut v = serde_json::json!({
            "CNIVersion": "1.0.0", "IPs": [{"Address": "10.0.0.2/24", "Extra": 1}], "dns": {"A": 1}
        });
        fold_keys(&mut v, &RESULT);
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "Extra": 1}], "dns": {"A": 1}
            })
        );
    }

    #[test]
    fn fold_keys_takes_the_spelling_that_sorts_last() {
        // Go marshals the raw map with sorted keys: "IPs" < "ips".
        for doc in [
            serde_json::json!({"ips": [{"address": "a"}], "IPs": [{"address": "b"}]}),
            serde_json::json!({"IPs": [{"address": "b"}], "ips": [{"address": "a"}]}),
        ] {
            let mut v = doc;
            fold_keys(&mut v, &RESULT);
            assert_eq!(v, serde_json::json!({"ips": [{"address": "a"}]}));
        }
    }
}
