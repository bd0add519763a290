//! Certificates made for the tests (rcgen, ring) and real handshakes over in-memory pipes.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test binary uses part of this

use std::sync::Arc;

use keyrack_rustls::rustls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub const NAME: &str = "svc.example.test";

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA.
pub struct Ca {
    pub pem: String,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `NAME` (server and client use) with `serial`, valid 1975–4096.
    pub fn leaf(&self, serial: u64) -> Leaf {
        self.leaf_with(serial, |_| {})
    }

    pub fn leaf_with(&self, serial: u64, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![NAME.to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: format!("{serial:02x}"),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        roots
    }
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// The serial as the resolver writes it (one byte here).
    pub serial: String,
}

impl Leaf {
    /// As a Vault PKI issue answers it.
    pub fn vault_json(&self, ca: &Ca) -> String {
        serde_json::json!({
            "certificate": self.cert_pem,
            "private_key": self.key_pem,
            "private_key_type": "ec",
            "issuing_ca": ca.pem,
            "ca_chain": [ca.pem],
            "serial_number": self.serial,
        })
        .to_string()
    }

    /// As keyrack-k8s renders a `kubernetes.io/tls` Secret's data (a JSON object of its keys,
    /// secrets-k8s/src/source/value.rs).
    pub fn k8s_json(&self) -> String {
        serde_json::json!({ "tls.crt": self.cert_pem, "tls.key": self.key_pem }).to_string()
    }

    /// The base64 lines of the key PEM: none may appear anywhere but in the secret.
    pub fn key_lines(&self) -> Vec<String> {
        self.key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned)
            .collect()
    }
}

pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    client_ca: Option<&Ca>,
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_cert_resolver(resolver))
}

pub fn client_config(
    ca: &Ca,
    identity: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots());
    Arc::new(match identity {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    })
}

/// What one handshake showed each side.
pub struct Seen {
    /// The serial of the server's leaf, as the client saw it.
    pub server_serial: String,
    /// The serial of the client's leaf, as the server saw it (mutual TLS).
    pub client_serial: Option<String>,
}

/// A full handshake over an in-memory pipe; the client verifies the server (and, with a client
/// verifier, the server the client). Errors are the handshake's.
pub async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<Seen, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from(NAME).unwrap();
    let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
    let c = c.map_err(|e| format!("client: {e}"))?;
    let s = s.map_err(|e| format!("server: {e}"))?;
    let server_serial = c
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(serial_of)
        .ok_or("no server certificate")?;
    let client_serial = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(serial_of);
    Ok(Seen {
        server_serial,
        client_serial,
    })
}

/// A certificate's serial number as the resolver and Vault write it.
pub fn serial_of(der: &CertificateDer<'_>) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let raw = cert.raw_serial();
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len() - 1);
    raw[start..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
