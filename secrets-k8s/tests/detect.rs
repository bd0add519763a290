//! Pod: which identities a pod was given, and errors that name exactly what is missing. Token
//! paths follow fixtures/k8s/projected_sa_token_claims.samples.json (`projected_volume_paths`).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use keyrack_core::ErrorKind;
use keyrack_k8s::Pod;
use keyrack_k8s::detect::VaultMethod;

fn empty_sa_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn an_empty_environment_names_every_missing_piece() {
    let sa = empty_sa_dir();
    let pod = Pod::from_vars(Vec::<(String, String)>::new()).with_service_account_dir(sa.path());
    let aws = pod.aws().unwrap_err();
    assert_eq!(aws.kind(), &ErrorKind::Config);
    for piece in [
        "AWS_ROLE_ARN is not set",
        "AWS_WEB_IDENTITY_TOKEN_FILE is not set",
        "AWS_REGION",
        "eks.amazonaws.com/role-arn",
    ] {
        assert!(aws.to_string().contains(piece), "{piece} not in: {aws}");
    }
    let azure = pod.azure().unwrap_err().to_string();
    for piece in [
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
    ] {
        assert!(azure.contains(piece), "{piece} not in: {azure}");
    }
    let vault = pod.vault().unwrap_err().to_string();
    for piece in [
        "VAULT_ADDR is not set",
        "VAULT_K8S_ROLE is not set",
        "no token",
    ] {
        assert!(vault.contains(piece), "{piece} not in: {vault}");
    }
    assert!(
        pod.gcp()
            .unwrap_err()
            .to_string()
            .contains("GOOGLE_APPLICATION_CREDENTIALS is not set")
    );
    let shown = format!(
        "{:?}",
        Pod::from_vars([("AWS_ROLE_ARN", "arn:aws:iam::1:role/x"), ("PATH", "/bin")])
    );
    assert!(
        shown.contains("AWS_ROLE_ARN") && !shown.contains("arn:aws") && !shown.contains("PATH"),
        "{shown}"
    );
}

#[test]
fn a_named_token_file_that_does_not_exist_is_reported_with_its_path() {
    let pod = Pod::from_vars([
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
        ),
        ("AWS_REGION", "eu-west-1"),
    ]);
    let e = pod.aws().unwrap_err().to_string();
    assert!(
        e.contains("AWS_WEB_IDENTITY_TOKEN_FILE=/var/run/secrets/eks.amazonaws.com/serviceaccount/token does not exist"),
        "{e}"
    );
    assert!(!e.contains("AWS_ROLE_ARN is not set"), "{e}");
}

#[test]
fn complete_environments_are_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "x.y.z").unwrap();
    let t = token.to_str().unwrap();

    let pod = Pod::from_vars([
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", t),
        ("AWS_DEFAULT_REGION", "eu-west-1"),
        ("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001"),
        ("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000002"),
        ("AZURE_FEDERATED_TOKEN_FILE", t),
        ("VAULT_ADDR", "https://vault.example:8200"),
        ("VAULT_K8S_ROLE", "payments"),
        ("VAULT_K8S_AUTH", "jwt"),
        ("VAULT_K8S_TOKEN_FILE", t),
    ]);
    let aws = pod.aws().unwrap();
    assert_eq!(
        (aws.region.as_str(), aws.token_file.clone()),
        ("eu-west-1", PathBuf::from(t))
    );
    assert_eq!(pod.azure().unwrap().authority_host, None);
    let vault = pod.vault().unwrap();
    assert_eq!(
        (vault.method, vault.mount.as_str(), vault.role.as_str()),
        (VaultMethod::Jwt, "jwt", "payments")
    );

    let wrong = Pod::from_vars([
        ("VAULT_ADDR", "x"),
        ("VAULT_K8S_ROLE", "r"),
        ("VAULT_K8S_AUTH", "oidc"),
        ("VAULT_K8S_TOKEN_FILE", t),
    ]);
    assert!(
        wrong
            .vault()
            .unwrap_err()
            .to_string()
            .contains("VAULT_K8S_AUTH=oidc is neither")
    );
}

#[test]
fn google_needs_an_external_account_file_whose_token_exists() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("credentials.json");
    std::fs::write(&config, r#"{"type":"service_account"}"#).unwrap();
    let pod = Pod::from_vars([("GOOGLE_APPLICATION_CREDENTIALS", config.to_str().unwrap())]);
    assert!(
        pod.gcp()
            .unwrap_err()
            .to_string()
            .contains("rather than \"external_account\"")
    );

    let token = dir.path().join("token");
    std::fs::write(
        &config,
        serde_json::json!({ "type": "external_account", "credential_source": { "file": token } })
            .to_string(),
    )
    .unwrap();
    assert!(
        pod.gcp()
            .unwrap_err()
            .to_string()
            .contains("credential_source.file=")
    );
    std::fs::write(&token, "x.y.z").unwrap();
    assert_eq!(pod.gcp().unwrap().token_file, token);
}

#[test]
fn jwt_auth_does_not_fall_back_to_the_api_token() {
    // The service-account token's audience is the API server; a Vault JWT role bound to `vault`
    // would refuse it, so jwt auth needs a projected token of its own.
    let sa = tempfile::tempdir().unwrap();
    std::fs::write(sa.path().join("token"), "x.y.z").unwrap();
    let vars = [
        ("VAULT_ADDR", "https://vault:8200"),
        ("VAULT_K8S_ROLE", "app"),
    ];
    let kubernetes = Pod::from_vars(vars).with_service_account_dir(sa.path());
    assert_eq!(
        kubernetes.vault().unwrap().token_file,
        sa.path().join("token")
    );
    let jwt = Pod::from_vars(vars.into_iter().chain([("VAULT_K8S_AUTH", "jwt")]))
        .with_service_account_dir(sa.path());
    let e = jwt.vault().unwrap_err().to_string();
    assert!(e.contains("no token for jwt auth"), "{e}");
}
