//! AWS Secrets Manager: write a secret, read it through the client, rotate it, see `Rotated`.
//!
//! Against the test ground's moto (or any account your credentials reach; it creates and
//! updates the secret it names, `keyrack-example/db` unless given another name):
//!
//! ```text
//! dir=$(scripts/testground/moto-up) && set -a && . "$dir/env" && set +a
//! cargo run -p keyrack-examples --example aws -- keyrack-example/db
//! MOTO_TESTGROUND_DIR=$dir scripts/testground/moto-down
//! ```
//!
//! Credentials, region and endpoint come from the environment as for the AWS CLI
//! (`AWS_REGION`, `AWS_ACCESS_KEY_ID`…, `AWS_ENDPOINT_URL`, a profile, IRSA).
#![allow(clippy::print_stdout)] // a program whose output is the point

use keyrack::aws::AwsBuilder;
use keyrack::{RotationEvent, Secrets};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "keyrack-example/db".to_owned());
    let aws = AwsBuilder::from_env().build().await?;
    // The SDK client the source uses, kept to play the part of the rotation.
    let admin = aws.client().clone();
    let write = |password: &'static str| {
        let admin = admin.clone();
        let name = name.clone();
        async move {
            let value = format!(r#"{{"username":"app","password":"{password}"}}"#);
            if admin
                .put_secret_value()
                .secret_id(&name)
                .secret_string(&value)
                .send()
                .await
                .is_err()
            {
                admin
                    .create_secret()
                    .name(&name)
                    .secret_string(&value)
                    .send()
                    .await?;
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        }
    };
    write("first-password").await?;
    println!("wrote {name}");

    let secrets = Secrets::builder().source("aws-sm", aws).build()?;
    let reference = format!("aws-sm://{name}");
    let user = secrets.get_secret(format!("{reference}#username")).await?;
    println!("startup: username={}", user.expose_str()?);
    let password = secrets.handle(format!("{reference}#password")).await?;
    println!(
        "handle: version {:?}, password of {} bytes (not printed)",
        password.current().version(),
        password.current().expose_bytes().len()
    );

    let mut events = password.subscribe();
    write("second-password").await?;
    println!("rotated {name} in Secrets Manager");
    // A service waits for its scheduled check (DescribeSecret, then GetSecretValue because the
    // version moved); the example asks at once.
    password.refresh_now().await?;
    if let Some(RotationEvent::Rotated { old, new, .. }) = events.recv().await {
        println!("event: Rotated {old:?} -> {new:?}");
    }
    println!(
        "handle: now version {:?}, password of {} bytes",
        password.current().version(),
        password.current().expose_bytes().len()
    );
    secrets.shutdown().await;
    Ok(())
}
