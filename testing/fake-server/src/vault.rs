//! Answers of a real OpenBao, recorded (`fixtures/vault/openbao-2.7.2.json`, see the README
//! beside it), for what cannot reach the OpenBao of the test ground: keyrack-vault's tests of a
//! transport of one's own, and the simulated fleet on a paused clock.

use serde_json::Value;

/// One recorded answer.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The HTTP status.
    pub status: u16,
    /// The headers that carry meaning, as sent.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub body: Value,
}

/// The answer recorded as `name`: `approle_login`, `ui_mounts_kv2`, `kv2_read`,
/// `kv2_metadata`, `permission_denied`, `rate_limited` or `login_refused`.
pub fn recorded(name: &str) -> Recorded {
    static ALL: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
        serde_json::from_str(include_str!("../fixtures/vault/openbao-2.7.2.json")).unwrap()
    });
    let entry = ALL
        .get(name)
        .unwrap_or_else(|| panic!("no answer `{name}` in fixtures/vault/openbao-2.7.2.json"));
    Recorded {
        status: u16::try_from(entry["status"].as_u64().unwrap()).unwrap(),
        headers: entry["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect(),
        body: entry["body"].clone(),
    }
}
