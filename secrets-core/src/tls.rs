//! TLS plumbing shared by the backends (feature `tls`).

/// Install rustls' ring crypto provider as the process default, once; later calls (and a
/// provider installed by the application first) are left alone.
///
/// The backends build their HTTP clients on rustls without a compiled-in provider, so that one TLS
/// stack serves every backend; such clients panic at first use unless a process default exists.
/// Every backend builder calls this before building a client.
pub fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race to another installer is fine: a default exists either way.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}
