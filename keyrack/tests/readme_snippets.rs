//! The README's backend snippets, compiled (never run: they need the services). Each body
//! between `// README` and `// end` is in README.md as written; the last test checks.
#![cfg(all(
    feature = "vault",
    feature = "aws",
    feature = "azure",
    feature = "gcp",
    feature = "k8s",
    feature = "sqlx",
    feature = "figment"
))]
#![allow(
    dead_code,
    unused_variables,
    unused_imports,
    unused_mut,
    clippy::unwrap_used
)]

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

async fn vault() -> Result {
    // README
    use keyrack::vault::{Auth, VaultBuilder};

    let vault = VaultBuilder::from_env() // VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT, VAULT_NAMESPACE, …
        .with_auth(Auth::approle("role-id", "secret-id"))
        .build()?;
    let secrets = keyrack::Secrets::builder().source("vault", vault).build()?;
    let api_key = secrets
        .get_secret("vault://secret/payments#api_key")
        .await?;
    let db = secrets.handle("vault://database/creds/app").await?;
    // end
    Ok(())
}

async fn sqlx_pool(secrets: keyrack::Secrets) -> Result {
    // README
    use keyrack::sqlx::RotatingPgPool;
    use keyrack::sqlx::sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    let creds = secrets.handle("vault://database/creds/app").await?;
    let base = PgConnectOptions::new().host("db.internal").database("app");
    let pool = RotatingPgPool::builder(creds, base)
        .pool_options(PgPoolOptions::new().max_connections(8))
        .build()
        .await?;
    let mut events = pool.subscribe(); // Applied, ReplacementFailed, Expired
    // end
    Ok(())
}

async fn aws() -> Result {
    // README
    let aws = keyrack::aws::AwsBuilder::from_env().build().await?;
    let secrets = keyrack::Secrets::builder().source("aws-sm", aws).build()?;
    let password = secrets.get_secret("aws-sm://prod/db#password").await?;
    let previous = secrets
        .get_secret("aws-sm://prod/db?stage=AWSPREVIOUS#password")
        .await?;
    // end
    Ok(())
}

async fn azure() -> Result {
    // README
    let azure = keyrack::azure::AzureBuilder::from_env()
        .with_default_vault("payments-kv")
        .build()?;
    let secrets = keyrack::Secrets::builder()
        .source("azure-kv", azure)
        .build()?;
    let password = secrets
        .get_secret("azure-kv://payments-kv/db-password")
        .await?;
    // end
    Ok(())
}

async fn gcp() -> Result {
    // README
    let gcp = keyrack::gcp::GcpBuilder::from_env().build().await?; // GOOGLE_CLOUD_PROJECT for short references
    let secrets = keyrack::Secrets::builder().source("gcp-sm", gcp).build()?;
    let password = secrets
        .get_secret("gcp-sm://projects/p1/secrets/db#password")
        .await?;
    // end
    Ok(())
}

async fn k8s_secrets() -> Result {
    // README
    use keyrack::k8s::{InCluster, source::KubernetesSecrets};

    let k8s = KubernetesSecrets::builder()
        .in_cluster(&InCluster::detect()?)
        .build()?;
    let secrets = keyrack::Secrets::builder().source("k8s", k8s).build()?;
    let api_key = secrets
        .get_secret("k8s://payments/app-config#api_key")
        .await?;
    // end
    Ok(())
}

async fn env_and_files() -> Result {
    // README
    use keyrack::sources::{EnvSource, FileSource};

    let secrets = keyrack::Secrets::builder()
        .source("env", EnvSource::new())
        .source("file", FileSource::new())
        .build()?;
    let url = secrets.get_secret("env://DB_URL").await?;
    let token = secrets.handle("file:///etc/app/secrets/token").await?;
    // end
    Ok(())
}

async fn k8s_pod() -> Result {
    // README
    use keyrack::Secrets;
    use keyrack::k8s::{InCluster, Pod, source::KubernetesSecrets};

    let pod = Pod::from_env(); // VAULT_ADDR, VAULT_K8S_ROLE, VAULT_K8S_TOKEN_FILE, AWS_ROLE_ARN, …
    let vault = keyrack::k8s::vault::from_pod(&pod)?.build()?; // kubernetes auth, token re-read at each login
    let k8s = KubernetesSecrets::builder()
        .in_cluster(&InCluster::detect()?)
        .build()?;
    let secrets = Secrets::builder()
        .source("vault", vault)
        .source("k8s", k8s)
        .build()?;
    let db = secrets.handle("vault://database/creds/app").await?;
    let api_key = secrets
        .get_secret("k8s://payments/app-config#api_key")
        .await?; // watched: `Rotated` on change
    // end
    Ok(())
}

async fn configuration() -> Result {
    let secrets = keyrack::Secrets::builder().build()?;
    // README
    use keyrack::figment::figment::{
        Figment,
        providers::{Env, Format, Toml},
    };
    use keyrack::figment::{Resolver, SecretRefField};

    #[derive(serde::Deserialize)]
    struct Db {
        host: String,
        user: String,
        password: SecretRefField,
    }

    let figment = Figment::from(Toml::file("app.toml")).merge(Env::prefixed("APP_").split("__"));
    let config = Resolver::new(&secrets)
        .live("db.password")
        .resolve(&figment)
        .await?;
    let db: Db = config.extract_inner("db")?; // `user` resolved; `password` keeps its reference
    let password = config.handle("db.password").unwrap(); // a handle that follows rotations
    // end
    Ok(())
}

#[test]
fn the_readme_shows_these_snippets() {
    let readme = include_str!("../README.md");
    let this = include_str!("readme_snippets.rs");
    let mut found = 0;
    for part in this.split("    // README\n").skip(1) {
        let body = &part[..part.find("    // end\n").unwrap()];
        let snippet: String = body
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        assert!(readme.contains(&snippet), "README.md lacks:\n{snippet}");
        found += 1;
    }
    assert_eq!(found, 9);
}
