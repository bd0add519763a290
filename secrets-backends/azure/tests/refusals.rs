//! Key Vault's refusals and failures, each with the message that fits it, against the loopback
//! fake (tests/common). No recording in the fixtures holds a 403 other than a disabled secret's,
//! so the bodies here are Key Vault's answers as quoted in public files (the find_string ids
//! name them), in the error schema of the Key Vault REST reference.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use keyrack_core::{ErrorKind, SecretSource};

/// A refusal of the firewall (`ForbiddenByFirewall`), as quoted in a public file (find_string
/// id 4022052901; the addresses and ids replaced).
const FIREWALL: &str = "Client address is not authorized and caller is not a trusted service.\r\nClient address: 203.0.113.7\r\nCaller: appid=00000000-0000-0000-0000-000000000001;oid=00000000-0000-0000-0000-000000000002\r\nVault: fakevault;location=westeurope";
/// A vault with public network access off, reached from outside its private link
/// (`ForbiddenByConnection`), as quoted in a public file (find_string id 57085207355).
const CONNECTION: &str = "Connection is not an approved private link and caller was ignored because bypass is not set to 'AzureServices' and PublicNetworkAccess is set to 'Disabled'.";
/// An RBAC vault without a role assignment (`ForbiddenByRbac`), as quoted in a public file
/// (find_string id 1754329532; ids replaced).
const RBAC: &str = "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid=00000000-0000-0000-0000-000000000001;oid=00000000-0000-0000-0000-000000000002\r\nAction: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\nResource: '/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/some-rg/providers/microsoft.keyvault/vaults/fakevault/secrets/db'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: fakevault;location=eastus\r\n";
/// A vault on access policies without `get` on secrets (`AccessDenied`), as quoted in a public
/// file (find_string id 1754329532; ids replaced).
const ACCESS_POLICY: &str = "The user, group or application 'appid=00000000-0000-0000-0000-000000000001;oid=00000000-0000-0000-0000-000000000002' does not have secrets get permission on key vault 'fakevault;location=germanywestcentral'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287";

/// Issue #16: every 403 got "needs the Key Vault Secrets User role", also for a firewall, a
/// private link or a gateway's page. Each refusal now says what it is and what would fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_says_what_would_fix_it() {
    let fake = Fake::start().await;
    fake.put("db", "value");
    let src = fake.source();
    // The first read logs in (challenge, token) and reads: the refusals below come after it.
    src.fetch(&kv_ref("db")).await.unwrap();
    let cases = [
        (
            Canned::key_vault(403, "Forbidden", FIREWALL, Some("ForbiddenByFirewall")),
            "firewall",
        ),
        (
            Canned::key_vault(403, "Forbidden", CONNECTION, Some("ForbiddenByConnection")),
            "private endpoint",
        ),
        (
            Canned::key_vault(403, "Forbidden", RBAC, Some("ForbiddenByRbac")),
            "Key Vault Secrets User",
        ),
        (
            Canned::key_vault(403, "Forbidden", ACCESS_POLICY, Some("AccessDenied")),
            "access polic",
        ),
        // No fixture: what an application gateway's firewall in front of the vault answers.
        (
            Canned::html(
                403,
                "<html><head><title>403 Forbidden</title></head><body>Microsoft-Azure-Application-Gateway/v2</body></html>",
            ),
            "not Key Vault",
        ),
    ];
    for (answer, says) in cases {
        fake.with_state(|s| s.canned.push_back(answer.clone()));
        let e = src.fetch(&kv_ref("db")).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::PermissionDenied, "{e}");
        let text = e.to_string();
        assert!(text.contains(says), "{says}: {text}");
        let role_hint = text.contains("Key Vault Secrets User");
        assert_eq!(
            role_hint,
            says == "Key Vault Secrets User" || says == "access polic",
            "{text}"
        );
        assert!(!text.contains("<html"), "{text}");
    }
}

/// Issue #16: Key Vault's messages hold `\r\n`-separated lines (caller, action, vault): errors
/// are one line, the lines joined, runs of whitespace made one space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_messages_make_one_line_errors() {
    let fake = Fake::start().await;
    fake.put("db", "value");
    let src = fake.source();
    src.fetch(&kv_ref("db")).await.unwrap();
    for message in [FIREWALL, RBAC] {
        fake.with_state(|s| {
            s.canned.push_back(Canned::key_vault(
                403,
                "Forbidden",
                message,
                Some("ForbiddenByRbac"),
            ))
        });
        let e = src.fetch(&kv_ref("db")).await.unwrap_err();
        let text = format!("{e}");
        assert!(!text.contains(['\r', '\n']), "{text:?}");
        assert!(!text.contains("  "), "{text:?}");
        assert!(text.contains("Vault: fakevault;location="), "{text}");
    }
}

/// Issue #8: the wait Key Vault (or something in front of it) asks for is kept whatever the
/// status: `retry-after-ms` first (Azure's millisecond variant), else `Retry-After` in seconds
/// or as an HTTP-date (read against the builder's clock). The source's retry floor is a second,
/// the first step of Key Vault's throttling guidance.
/// Answers: the fake's 429 (shaped after the Key Vault throttling guidance: code `Throttled`),
/// a 503 in Key Vault's error schema (REST reference; no recording has one), a gateway's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_kept_on_any_status_and_as_a_date() {
    let fake = Fake::start().await;
    fake.put("db", "value");
    let clock = keyrack_core::ManualClock::new(); // its wall clock reads Fri, 15 Jan 2027 08:00:00 GMT
    let src = fake
        .builder(std::sync::Arc::new(RotatingToken::new(
            "projected-sa-token-1",
        )))
        .with_clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(
        src.capabilities().retry_floor,
        std::time::Duration::from_secs(1)
    );
    src.fetch(&kv_ref("db")).await.unwrap();
    let unavailable = || {
        Canned::key_vault(
            503,
            "ServiceUnavailable",
            "The service is temporarily unavailable.",
            None,
        )
    };
    let throttled = || {
        Canned::key_vault(
            429,
            "Throttled",
            "Request was not processed because too many requests were received.",
            None,
        )
    };
    let cases = [
        (
            unavailable().header("retry-after", "7"),
            ErrorKind::Unavailable,
            7_000,
        ),
        (
            unavailable().header("retry-after", "Fri, 15 Jan 2027 08:00:20 GMT"),
            ErrorKind::Unavailable,
            20_000,
        ),
        (
            throttled().header("retry-after", "Fri, 15 Jan 2027 08:00:45 GMT"),
            ErrorKind::Throttled,
            45_000,
        ),
        (
            throttled()
                .header("retry-after-ms", "1500")
                .header("retry-after", "9"),
            ErrorKind::Throttled,
            1_500,
        ),
        (
            Canned::html(503, "<html>Service Unavailable</html>")
                .header("retry-after", "Fri, 15 Jan 2027 08:00:30 GMT"),
            ErrorKind::Unavailable,
            30_000,
        ),
    ];
    for (answer, kind, millis) in cases {
        fake.with_state(|s| s.canned.push_back(answer.clone()));
        let e = src.fetch(&kv_ref("db")).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.retry_after()),
            (&kind, Some(std::time::Duration::from_millis(millis))),
            "{answer:?}: {e}"
        );
    }
}
