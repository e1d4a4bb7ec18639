//! TLS, with rustls: the public listener's (`tls: {cert, key}`), whose PEM files are read
//! and checked into a rustls server config when the routes file is validated, so `strangler
//! check` and a reload refuse a bad certificate the same way they refuse any invalid config
//! and the gateway never starts (or swaps in) a listener it cannot serve; and the client
//! side of `https://` services, trusting the service's `ca` or the system's roots.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::NamedFile;

/// The listener's certificate chain and key, loaded (the files as read are among the
/// config's `files`).
#[derive(Debug, Clone)]
pub struct Tls {
    /// The rustls config every new TLS connection is accepted with (ALPN: h2, http/1.1).
    pub server: Arc<ServerConfig>,
}

/// Which of the two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
    /// The two together (a key that is not the certificate's).
    Both,
}

/// Reads and checks `cert` and `key`; the files as read.
pub fn load(cert: &Path, key: &Path) -> Result<(Tls, [NamedFile; 2]), (Part, String)> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| (Part::Cert, format!("cannot read {}: {e}", cert.display())))?;
    let key_pem = std::fs::read(key)
        .map_err(|e| (Part::Key, format!("cannot read {}: {e}", key.display())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                Part::Cert,
                format!("{}: not a PEM certificate chain: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err((
            Part::Cert,
            format!(
                "{}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
                cert.display()
            ),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            Part::Key,
            format!(
                "{}: no usable private key in it (expected PEM: PKCS#8, PKCS#1 or SEC1): {e}",
                key.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| (Part::Both, e.to_string()))?
        .with_no_client_auth()
        // Checks that the key is the certificate's.
        .with_single_cert(chain, private)
        .map_err(|e| {
            (
                Part::Both,
                format!(
                    "{} and {} do not make a usable pair: {e}",
                    cert.display(),
                    key.display()
                ),
            )
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let files = [
        NamedFile::read(cert, &cert_pem),
        NamedFile::read(key, &key_pem),
    ];
    let tls = Tls {
        server: Arc::new(server),
    };
    Ok((tls, files))
}

/// The TLS of an `https://` service.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub config: Arc<rustls::ClientConfig>,
    /// What it trusts: xxh3 of its `ca` file, 0 for the system's roots (connections made
    /// with one trust are not reused under another).
    pub trust: u64,
    /// The `ca` file as read.
    pub ca: Option<NamedFile>,
    /// The name the service's certificate must carry (the URL's host).
    pub name: ServerName<'static>,
}

/// The client config of an `https://` service: trusting the certificates of the PEM file
/// `ca`, or else the system's store (read once per process), offering `alpn`.
pub fn client(
    ca: Option<&Path>,
    alpn: &[u8],
    name: ServerName<'static>,
) -> Result<Upstream, String> {
    let mut read = None;
    let roots = match ca {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            read = Some(NamedFile::read(path, &pem));
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert
                    .map_err(|e| format!("{}: not a PEM certificate list: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: an unusable CA certificate: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "{}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
                    path.display()
                ));
            }
            Arc::new(roots)
        }
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Upstream {
        config: Arc::new(config),
        trust: read.as_ref().map_or(0, |f| f.hash | 1),
        ca: read,
        name,
    })
}

/// A client config that trusts nothing, for a service whose `ca` file is absent where the
/// routes file is only checked (never used to connect).
pub fn unchecked(alpn: &[u8], name: ServerName<'static>) -> Upstream {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Upstream {
        config: Arc::new(config),
        trust: 0,
        ca: None,
        name,
    }
}

/// The system's trusted roots (the platform's store, as rustls-native-certs finds it).
fn system_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no CA certificates in the system's store (install ca-certificates, or name a PEM file with ca)"
                        .to_string(),
                );
            }
            Ok(Arc::new(roots))
        })
        .clone()
}
