//! [`TokenClaims`]: what a projected service-account token says about itself, decoded without
//! verifying the signature.
//!
//! The pod cannot verify its own token (it has no key of the issuer) and does not need to: the
//! backend that receives the token verifies it. The claims are read only to schedule re-reads
//! (`iat`/`exp`) and to say who the pod is in errors and logs (namespace, service account).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyrack_core::{Error, ErrorKind, Result};
use serde::Deserialize;

/// The claims of a projected service-account token. None of them is secret; the token is.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TokenClaims {
    /// `iss`: the cluster's issuer URL.
    pub issuer: Option<String>,
    /// `sub`: `system:serviceaccount:<namespace>:<name>` for a service-account token.
    pub subject: Option<String>,
    /// `aud`: the audiences the token was requested for (a string or an array in the JWT).
    pub audiences: Vec<String>,
    /// `exp`.
    pub expires_at: Option<SystemTime>,
    /// `iat`.
    pub issued_at: Option<SystemTime>,
    /// `nbf`.
    pub not_before: Option<SystemTime>,
    /// `kubernetes.io.namespace`, else the namespace part of `sub`.
    pub namespace: Option<String>,
    /// `kubernetes.io.serviceaccount.name`, else the name part of `sub`.
    pub service_account: Option<String>,
    /// `kubernetes.io.pod.name` (absent for tokens not bound to a pod).
    pub pod: Option<String>,
    /// `kubernetes.io.node.name` (newer API servers only).
    pub node: Option<String>,
}

impl TokenClaims {
    /// Decodes the claims of a compact JWT without verifying it.
    ///
    /// The error never quotes the token: a malformed one says which part is wrong, not what it holds.
    pub fn decode(jwt: &str) -> Result<Self> {
        let raw: RawClaims =
            jsonwebtoken::dangerous::insecure_decode_claims(jwt.trim()).map_err(|e| {
                // jsonwebtoken's own message can quote claim text (serde's "invalid type: …"), so
                // only its category is kept.
                let what = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidToken => "it does not have three parts",
                    jsonwebtoken::errors::ErrorKind::Base64(_) => "a part is not base64url",
                    jsonwebtoken::errors::ErrorKind::Json(_) => {
                        "its claims are not a JSON object of the expected shape"
                    }
                    jsonwebtoken::errors::ErrorKind::Utf8(_) => "its claims are not UTF-8",
                    _ => "it could not be decoded",
                };
                Error::new(
                    ErrorKind::InvalidValue,
                    format!("the token is not a JWT: {what}"),
                )
            })?;
        Ok(raw.into())
    }

    /// The token's lifetime (`exp - iat`), when both are present and ordered.
    pub fn lifetime(&self) -> Option<Duration> {
        self.expires_at?.duration_since(self.issued_at?).ok()
    }

    /// When `fraction` of the lifetime has passed (the kubelet itself refreshes at 80 %).
    pub fn refresh_at(&self, fraction: f64) -> Option<SystemTime> {
        Some(self.issued_at? + self.lifetime()?.mul_f64(fraction))
    }
}

impl fmt::Debug for TokenClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        f.debug_struct("TokenClaims")
            .field("iss", &self.issuer)
            .field("sub", &self.subject)
            .field("aud", &self.audiences)
            .field("exp", &secs(self.expires_at))
            .field("iat", &secs(self.issued_at))
            .field("nbf", &secs(self.not_before))
            .field("namespace", &self.namespace)
            .field("service_account", &self.service_account)
            .field("pod", &self.pod)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    sub: Option<String>,
    #[serde(default)]
    aud: Audience,
    exp: Option<f64>,
    iat: Option<f64>,
    nbf: Option<f64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct KubernetesClaims {
    namespace: Option<String>,
    serviceaccount: Option<NamedRef>,
    pod: Option<NamedRef>,
    node: Option<NamedRef>,
}

#[derive(Deserialize)]
struct NamedRef {
    name: Option<String>,
}

/// A NumericDate as a time; `None` when negative, not finite or past what `SystemTime` holds.
fn epoch(secs: Option<f64>) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs?).ok()?)
}

impl From<RawClaims> for TokenClaims {
    fn from(raw: RawClaims) -> Self {
        let k8s = raw.kubernetes.unwrap_or_default();
        // `system:serviceaccount:<namespace>:<name>`: the fallback for tokens without the
        // `kubernetes.io` claim (legacy secret-based tokens, other issuers' shapes).
        let from_sub = raw
            .sub
            .as_deref()
            .and_then(|s| s.strip_prefix("system:serviceaccount:"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, name)| (ns.to_owned(), name.to_owned()));
        TokenClaims {
            issuer: raw.iss,
            audiences: match raw.aud {
                Audience::None => Vec::new(),
                Audience::One(a) => vec![a],
                Audience::Many(a) => a,
            },
            expires_at: epoch(raw.exp),
            issued_at: epoch(raw.iat),
            not_before: epoch(raw.nbf),
            namespace: k8s
                .namespace
                .or_else(|| from_sub.as_ref().map(|(ns, _)| ns.clone())),
            service_account: k8s
                .serviceaccount
                .and_then(|s| s.name)
                .or_else(|| from_sub.map(|(_, name)| name)),
            pod: k8s.pod.and_then(|p| p.name),
            node: k8s.node.and_then(|n| n.name),
            subject: raw.sub,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::Engine;

    fn jwt(claims: &serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            b64.encode(br#"{"alg":"RS256","kid":"k"}"#),
            b64.encode(serde_json::to_vec(claims).unwrap())
        )
    }

    /// The official example from kubernetes/website service-accounts-admin.md
    /// (fixtures/k8s/projected_sa_token_claims.samples.json, `official_docs_pod_bound_token`).
    #[test]
    fn decodes_the_documented_pod_bound_token() {
        let samples: serde_json::Value = serde_json::from_str(include_str!(
            "../tests/fixtures/k8s/projected_sa_token_claims.samples.json"
        ))
        .unwrap();
        let c =
            TokenClaims::decode(&jwt(&samples["official_docs_pod_bound_token"]["claims"])).unwrap();
        assert_eq!(c.issuer.as_deref(), Some("https://my-cluster.example.com"));
        assert_eq!(
            c.audiences,
            vec!["https://my-audience.example.com".to_owned()]
        );
        assert_eq!(c.namespace.as_deref(), Some("my-namespace"));
        assert_eq!(c.service_account.as_deref(), Some("my-serviceaccount"));
        assert_eq!(c.pod.as_deref(), Some("my-pod"));
        assert_eq!(c.node.as_deref(), Some("my-node"));
        assert_eq!(c.lifetime(), Some(Duration::from_secs(3600)));
        assert_eq!(
            c.refresh_at(0.8),
            Some(UNIX_EPOCH + Duration::from_secs(1729601640 + 2880))
        );

        // kubectl create token: not bound to a pod.
        let c = TokenClaims::decode(&jwt(
            &samples["observed_kubectl_create_token_not_pod_bound"]["claims"],
        ))
        .unwrap();
        assert_eq!(
            (c.namespace.as_deref(), c.pod.as_deref()),
            (Some("default"), None)
        );

        // The legacy shape AWS rejected: no kubernetes.io.namespace, so `sub` says who it is.
        let c = TokenClaims::decode(&jwt(
            &samples["observed_legacy_boundObjectRef_format"]["claims"],
        ))
        .unwrap();
        assert_eq!(c.namespace.as_deref(), Some("default"));
        assert_eq!(c.service_account.as_deref(), Some("default"));
    }

    #[test]
    fn audience_may_be_a_string_and_claims_may_be_missing() {
        let c = TokenClaims::decode(&jwt(&serde_json::json!({ "aud": "vault" }))).unwrap();
        assert_eq!(c.audiences, vec!["vault".to_owned()]);
        assert_eq!((c.lifetime(), c.refresh_at(0.8)), (None, None));
    }

    #[test]
    fn malformed_tokens_are_typed_errors_that_never_quote_the_token() {
        for bad in [
            "",
            "not-a-jwt",
            "a.b",
            "a.!!!.c",
            "e30.InNlY3JldC1jbGFpbSI.c2ln",
        ] {
            let e = TokenClaims::decode(bad).unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::InvalidValue, "{bad}");
            assert!(!e.to_string().contains("secret-claim"), "{e}");
        }
    }

    /// Found by the `k8s_claims` fuzz target: a time past what `SystemTime` holds (`exp` of
    /// 2e37, `iat` of 1e19 seconds) panicked instead of being left out.
    #[test]
    fn times_out_of_range_are_absent() {
        let c = TokenClaims::decode(&jwt(&serde_json::json!({
            "exp": 2e37,
            "iat": 1e19,
            "nbf": 1.5e9,
        })))
        .unwrap();
        assert_eq!((c.expires_at, c.issued_at), (None, None));
        assert_eq!(
            c.not_before,
            Some(UNIX_EPOCH + Duration::from_secs(1_500_000_000))
        );
        assert_eq!(c.lifetime(), None);
    }
}
