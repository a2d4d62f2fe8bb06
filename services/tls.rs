//! Optional TLS for the gRPC hops (rustls, through tonic's TLS support).
//!
//! Servers (rng, hasher): a certificate and its key from PEM files turn TLS
//! on; a client CA on top requires every client to present a certificate
//! signed by it (mutual TLS). Clients (worker, webui, the healthcheck): TLS
//! is on for an `https://` (or, for the healthcheck, `grpcs://`) URL; the CA
//! to verify the server with is required (no system roots are compiled in),
//! and a client certificate and key are presented when given.
//!
//! Everything is read, parsed and checked once, at start-up, so that a
//! missing file, a file that is not PEM, or a key that does not match its
//! certificate is a clear error naming the file and the setting, before the
//! service serves anything, and never a panic or an error on the first call.
//! Nothing here ever logs or displays key material: [`ServerTls`] and
//! [`ClientTls`] show their file paths only.

use crate::telemetry::error_chain::describe;
use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};
use tokio_rustls::rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Settings, as a user writes them in an error message: flag and variable.
pub mod setting {
    pub const TLS_CERT: &str = "--tls-cert / TLS_CERT";
    pub const TLS_KEY: &str = "--tls-key / TLS_KEY";
    pub const TLS_CLIENT_CA: &str = "--tls-client-ca / TLS_CLIENT_CA";
    pub const TLS_CA: &str = "--tls-ca / TLS_CA";
    pub const TLS_CLIENT_CERT: &str = "--tls-client-cert / TLS_CLIENT_CERT";
    pub const TLS_CLIENT_KEY: &str = "--tls-client-key / TLS_CLIENT_KEY";
}

/// A server drops a TLS handshake that has not finished after this long, so
/// a client that connects and says nothing holds no server task for ever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS settings cannot be used. Every message names the setting and,
/// for a file, its path; none carries a byte of a key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{given} is set but {missing} is not: TLS needs both, a certificate and its private key"
    )]
    Incomplete {
        given: &'static str,
        missing: &'static str,
    },
    #[error(
        "{given} is set but {missing} is not: a client certificate is only used over TLS, which needs the CA to verify the server with"
    )]
    ClientCertWithoutCa {
        given: &'static str,
        missing: &'static str,
    },
    // Not a `source`: the reason is in the message, once.
    #[error("cannot read {} (set by {setting}): {error}", path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} (set by {setting}) is not a PEM certificate file: {reason}", path.display())]
    Certificate {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{} (set by {setting}) holds no usable PEM private key (expected an unencrypted PKCS#8, PKCS#1 or SEC1 key)",
        path.display()
    )]
    Key {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("{} and {} (set by {cert_setting} and {key_setting}) do not make a usable identity: {reason}", cert.display(), key.display())]
    Identity {
        cert_setting: &'static str,
        key_setting: &'static str,
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// A file's bytes, or an error naming it and its setting.
fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        setting,
        path: path.to_owned(),
        error,
    })
}

/// Reads a PEM file of one or more certificates, and checks there is one.
fn read_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TlsError> {
    let pem = read(setting, path)?;
    let invalid = |reason: String| TlsError::Certificate {
        setting,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(error.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(
            "no \"-----BEGIN CERTIFICATE-----\" section in it".into(),
        ));
    }
    Ok((pem, certs))
}

/// Reads a CA file: every certificate in it must be usable as a trust anchor.
fn read_ca(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let (pem, certs) = read_certificates(setting, path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|error| TlsError::Certificate {
            setting,
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {error}"),
        })?;
    }
    Ok(pem)
}

/// Reads a PEM private key. The parse error itself is not kept: it may quote
/// the file's contents.
fn read_key(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Key {
        setting,
        path: path.to_owned(),
    })?;
    Ok(pem)
}

/// A certificate and key, or neither; one without the other is an error.
fn pair<'a>(
    cert: (&'static str, Option<&'a Path>),
    key: (&'static str, Option<&'a Path>),
) -> Result<Option<(&'a Path, &'a Path)>, TlsError> {
    match (cert.1, key.1) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (Some(_), None) => Err(TlsError::Incomplete {
            given: cert.0,
            missing: key.0,
        }),
        (None, Some(_)) => Err(TlsError::Incomplete {
            given: key.0,
            missing: cert.0,
        }),
    }
}

/// A server's TLS: its identity, and the CA its clients' certificates must be
/// signed by when mutual TLS is on. Checked when loaded.
#[derive(Clone)]
pub struct ServerTls {
    config: ServerTlsConfig,
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .finish()
    }
}

impl ServerTls {
    /// The TLS of a server from its settings: `None` (plaintext) when no
    /// certificate and no key are given. The files are read and checked now:
    /// PEM, a certificate and a private key that match, a usable client CA.
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        let Some((cert, key)) = pair((setting::TLS_CERT, cert), (setting::TLS_KEY, key))? else {
            if client_ca.is_some() {
                return Err(TlsError::Incomplete {
                    given: setting::TLS_CLIENT_CA,
                    missing: "--tls-cert / TLS_CERT and --tls-key / TLS_KEY",
                });
            }
            return Ok(None);
        };
        let (cert_pem, _) = read_certificates(setting::TLS_CERT, cert)?;
        let key_pem = read_key(setting::TLS_KEY, key)?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = client_ca {
            let ca_pem = read_ca(setting::TLS_CLIENT_CA, ca)?;
            config = config.client_ca_root(Certificate::from_pem(ca_pem));
        }
        // tonic builds rustls' config here: what it would refuse when the
        // server starts (a key that does not match the certificate) is
        // refused now, with the files named.
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|error| TlsError::Identity {
                cert_setting: setting::TLS_CERT,
                key_setting: setting::TLS_KEY,
                cert: cert.to_owned(),
                key: key.to_owned(),
                reason: describe(&error),
            })?;
        Ok(Some(Self {
            config,
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: client_ca.map(Path::to_owned),
        }))
    }

    /// tonic's configuration.
    pub fn config(&self) -> ServerTlsConfig {
        self.config.clone()
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn is_mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    /// Logs what is on, and the files: never their contents.
    pub fn log(&self, service: &str) {
        tracing::info!(
            cert = %self.cert.display(),
            key = %self.key.display(),
            client_ca = %self.client_ca.as_deref().map_or_else(|| "none".into(), |p| p.display().to_string()),
            mutual_tls = self.is_mutual(),
            "{service}: TLS on{}",
            if self.is_mutual() {
                ", client certificates required"
            } else {
                ""
            }
        );
    }
}

/// A client's TLS: the CA to verify servers with, and the identity to
/// present for mutual TLS. Checked when loaded.
#[derive(Clone)]
pub struct ClientTls {
    ca: Certificate,
    identity: Option<Identity>,
    ca_path: PathBuf,
    cert_path: Option<PathBuf>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_path)
            .field("client_cert", &self.cert_path)
            .finish()
    }
}

impl ClientTls {
    /// The TLS of a client from its settings: `None` when none is given. A
    /// client certificate without its key (or the reverse), or without a CA,
    /// is an error; the files are read and checked now.
    pub fn load(
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        let identity = pair(
            (setting::TLS_CLIENT_CERT, client_cert),
            (setting::TLS_CLIENT_KEY, client_key),
        )?;
        let Some(ca) = ca else {
            return match identity {
                None => Ok(None),
                Some(_) => Err(TlsError::ClientCertWithoutCa {
                    given: setting::TLS_CLIENT_CERT,
                    missing: setting::TLS_CA,
                }),
            };
        };
        let ca_pem = read_ca(setting::TLS_CA, ca)?;
        let tls = Self {
            ca: Certificate::from_pem(ca_pem),
            identity: match identity {
                None => None,
                Some((cert, key)) => {
                    let (cert_pem, _) = read_certificates(setting::TLS_CLIENT_CERT, cert)?;
                    let key_pem = read_key(setting::TLS_CLIENT_KEY, key)?;
                    Some(Identity::from_pem(cert_pem, key_pem))
                }
            },
            ca_path: ca.to_owned(),
            cert_path: identity.map(|(cert, _)| cert.to_owned()),
        };
        // tonic builds rustls' config here: refuse now what a connection
        // would refuse later (a client key that does not match its
        // certificate).
        Endpoint::from_static("https://localhost")
            .tls_config(tls.config("localhost"))
            .map_err(|error| match identity {
                Some((cert, key)) => TlsError::Identity {
                    cert_setting: setting::TLS_CLIENT_CERT,
                    key_setting: setting::TLS_CLIENT_KEY,
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    reason: describe(&error),
                },
                None => TlsError::Certificate {
                    setting: setting::TLS_CA,
                    path: ca.to_owned(),
                    reason: describe(&error),
                },
            })?;
        Ok(Some(tls))
    }

    /// tonic's configuration for a server whose certificate must name
    /// `domain` (a DNS name or an IP address), whatever address is dialled.
    /// The handshake is unbounded here: the caller bounds it (the balancer with
    /// its connect timeout).
    pub fn config(&self, domain: &str) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .domain_name(domain);
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }

    /// Whether a client certificate is presented (mutual TLS).
    pub fn is_mutual(&self) -> bool {
        self.identity.is_some()
    }

    /// The CA file, for logs.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The client certificate file, for logs.
    pub fn cert_path(&self) -> Option<&Path> {
        self.cert_path.as_deref()
    }
}
