//! The CNI protocol as a plugin sees it: environment, versions, errors.
//! Our own serde types (spec 0.1.0 … 1.1.0), not an unmaintained crate.

pub mod result;

use serde::Serialize;

/// Every spec version we speak, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
pub const LATEST_VERSION: &str = "1.1.0";

/// Spec error codes (and upstream's catch-all 999).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnv = 4,
    DecodeFailure = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    PluginNotAvailable = 50,
    LimitedConnectivity = 51,
    Internal = 999,
}

/// A CNI error, printed as `{cniVersion, code, msg, details}` on stdout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_default()
    }
}

/// `CNI_COMMAND` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Check,
    Del,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "CHECK" => Command::Check,
            "DEL" => Command::Del,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub path: String,
    pub args: String,
}

impl Env {
    /// Reads and validates what `command` requires, as libcni's skel does.
    pub fn from_vars(
        command: Command,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Env, CniError> {
        let required: &[&str] = match command {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Status | Command::Gc => &["CNI_PATH"],
            Command::Version => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|k| get(k).is_none_or(|v| v.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        let env = Env {
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            path: get("CNI_PATH").unwrap_or_default(),
            args: get("CNI_ARGS").unwrap_or_default(),
        };
        if required.contains(&"CNI_CONTAINERID") && !valid_container_id(&env.container_id) {
            return Err(
                CniError::new(Code::InvalidEnv, "invalid characters in containerID")
                    .with_details(env.container_id.escape_debug().to_string()),
            );
        }
        if required.contains(&"CNI_IFNAME") && !valid_ifname(&env.ifname) {
            return Err(CniError::new(Code::InvalidEnv, "invalid interface name")
                .with_details(env.ifname.escape_debug().to_string()));
        }
        Ok(env)
    }
}

/// Spec: alphanumerics plus `_`, `.` and `-`, starting alphanumeric.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Same rule as libcni: a network name is used in chain hashes and comments.
pub fn valid_network_name(name: &str) -> bool {
    valid_container_id(name)
}

/// Linux interface names: 1..=15 bytes, no `/`, `:` or whitespace, not `.`/`..`.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// A parsed `major.minor.patch`.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let out = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(out)
}

pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// Checks the config's version; an empty one means 0.1.0, as libcni says.
pub fn check_version(v: &str) -> Result<&str, CniError> {
    let v = if v.is_empty() { "0.1.0" } else { v };
    if is_supported(v) {
        return Ok(SUPPORTED_VERSIONS
            .iter()
            .find(|s| **s == v)
            .copied()
            .unwrap_or(LATEST_VERSION));
    }
    Err(
        CniError::new(Code::IncompatibleVersion, "incompatible CNI versions").with_details(
            format!("config is {v:?}, plugin supports {:?}", SUPPORTED_VERSIONS),
        ),
    )
}

/// The VERSION answer.
pub fn version_info(cni_version: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[rstest]
    #[case::add_without_netns(Command::Add, &[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")], "required env variables [CNI_NETNS] missing")]
    #[case::del_needs_no_netns(Command::Del, &[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")], "")]
    #[case::empty_counts_as_missing(Command::Del, &[("CNI_CONTAINERID", ""), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")], "required env variables [CNI_CONTAINERID] missing")]
    #[case::bad_container_id(Command::Del, &[("CNI_CONTAINERID", "a\"b"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")], "invalid characters in containerID")]
    #[case::unicode_container_id(Command::Del, &[("CNI_CONTAINERID", "é"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")], "invalid characters in containerID")]
    #[case::bad_ifname(Command::Del, &[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "a/b"), ("CNI_PATH", "/x")], "invalid interface name")]
    #[case::version_needs_nothing(Command::Version, &[], "")]
    fn env_validation(#[case] cmd: Command, #[case] vars: &[(&str, &str)], #[case] err: &str) {
        match Env::from_vars(cmd, env_of(vars)) {
            Ok(_) => assert_eq!(err, ""),
            Err(e) => {
                assert_eq!(e.msg, err);
                assert_eq!(e.code, Code::InvalidEnv);
            }
        }
    }

    #[rstest]
    #[case("1.0.0", true)]
    #[case("", true)]
    #[case("0.4.0", true)]
    #[case("1.1.0", true)]
    #[case("2.0.0", false)]
    #[case("0.5.0", false)]
    #[case("banana", false)]
    fn versions(#[case] v: &str, #[case] ok: bool) {
        let r = check_version(v);
        assert_eq!(r.is_ok(), ok, "{r:?}");
        if let Err(e) = r {
            assert_eq!(e.code, Code::IncompatibleVersion);
        }
    }

    #[test]
    fn error_json_shape() {
        let e = CniError::new(Code::InvalidConfig, "bad").with_details("why");
        assert_eq!(
            e.to_json("1.0.0").to_string(),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"}"#
        );
        let e = CniError::new(Code::Internal, "x");
        assert_eq!(
            e.to_json("0.4.0").to_string(),
            r#"{"cniVersion":"0.4.0","code":999,"msg":"x"}"#
        );
    }

    #[test]
    fn version_parsing() {
        assert_eq!(parse_version("1.10.3"), Some((1, 10, 3)));
        assert_eq!(parse_version("1.0"), None);
        assert_eq!(parse_version("1.0.0.0"), None);
    }
}
