//! A backend's URL taken apart: the endpoint every replica's connections
//! are made from, the host that is resolved and that a TLS certificate is
//! checked against, and the refusals of a URL that cannot work.

use super::{BalancerSettings, Service};
use tonic::transport::{ClientTlsConfig, Endpoint};

/// A backend URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name} URL {url:?}: {reason}")]
pub struct InvalidUrl {
    pub(super) name: &'static str,
    pub(super) url: String,
    pub(super) reason: String,
}

/// A backend's URL taken apart: what every replica's endpoint is made from.
pub(super) struct Target {
    pub endpoint: Endpoint,
    pub scheme: String,
    /// The URL's host, brackets off an IPv6 address: what is resolved, and
    /// what a TLS certificate is checked against.
    pub host: String,
    pub port: u16,
}

impl Target {
    pub(super) fn parse(service: Service, url: &str) -> Result<Self, InvalidUrl> {
        let shape = |reason: &str| InvalidUrl {
            name: service.name,
            url: url.to_owned(),
            reason: format!(
                "{reason} (expected like http://{}:{})",
                service.name, service.port
            ),
        };
        let endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|error| shape(&error.to_string()))?;
        let uri = endpoint.uri().clone();
        let host = uri.host().ok_or_else(|| shape("no host"))?;
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            scheme: uri.scheme_str().unwrap_or("http").to_owned(),
            port: uri.port_u16().ok_or_else(|| shape("no port"))?,
            endpoint,
        })
    }

    /// TLS for an `https://` URL, the certificate checked against the URL's
    /// host; an `https://` URL without a CA is refused, TLS settings with a
    /// plaintext URL are said loudly.
    pub(super) fn tls(
        &self,
        service: Service,
        url: &str,
        settings: &BalancerSettings,
    ) -> Result<Option<ClientTlsConfig>, InvalidUrl> {
        let name = service.name;
        match (self.scheme.as_str(), &settings.tls) {
            ("https", Some(tls)) => {
                tracing::info!(
                    backend = name,
                    url,
                    ca = %tls.ca_path().display(),
                    client_cert = %tls.cert_path().map_or_else(|| "none".into(), |p| p.display().to_string()),
                    "{name}: TLS on, certificates checked against the name {}",
                    self.host
                );
                Ok(Some(
                    tls.config(&self.host).timeout(settings.connect_timeout),
                ))
            }
            ("https", None) => Err(InvalidUrl {
                name,
                url: url.to_owned(),
                reason: format!(
                    "https:// needs the CA that signed {name}'s certificate: set {}",
                    crate::tls::setting::TLS_CA
                ),
            }),
            (_, Some(_)) => {
                tracing::warn!(
                    backend = name,
                    url,
                    "TLS settings are given but the URL is not https://: calls to {name} are not encrypted"
                );
                Ok(None)
            }
            (_, None) => Ok(None),
        }
    }
}
