//! TLS and mutual TLS on the gRPC hops, with certificates made by rcgen at
//! test time and written to PEM files, so the files are loaded the way the
//! binary loads them. Servers run in-process on 127.0.0.1:0.

use crate::support::{Spawned, generate_through, have, run_readme_line, sha256_hex};
use dockercoins::{
    client::balancer::{BalancerSettings, Policy, Resolver},
    client::{BalancedHasher, BalancedRng},
    hasher::HasherConfig,
    healthcheck::{Probe, Unhealthy, check},
    rng::RngConfig,
    tls::{ClientTls, ServerTls, TlsError},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

/// A directory of PEM files, removed when dropped.
struct Pki {
    dir: PathBuf,
    _removed_on_drop: tempfile::TempDir,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate for `names`, signed by `issuer`: (certificate, key) PEM.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names.clone()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, &names[0]);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &**issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// An empty directory of this test's own.
    fn empty() -> Self {
        let temp = tempfile::Builder::new()
            .prefix("dockercoins-test-tls-")
            .tempdir()
            .unwrap();
        Self {
            dir: temp.path().to_owned(),
            _removed_on_drop: temp,
        }
    }

    /// A CA; a server certificate for `rng`, `localhost` and `127.0.0.1`; a
    /// client certificate; and another CA with a client certificate of its
    /// own (the wrong CA to trust, the wrong certificate to present).
    fn new() -> Self {
        let pki = Self::empty();
        let ca = ca("dockercoins test CA");
        let other = ca_other();
        let (server, server_key) = leaf(
            &ca,
            &["rng", "localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(&ca, &["worker"], ExtendedKeyUsagePurpose::ClientAuth);
        let (stranger, stranger_key) =
            leaf(&other, &["worker"], ExtendedKeyUsagePurpose::ClientAuth);
        for (name, pem) in [
            ("ca.crt", ca.pem()),
            ("server.crt", server),
            ("server.key", server_key),
            ("client.crt", client),
            ("client.key", client_key),
            ("other-ca.crt", other.pem()),
            ("other-client.crt", stranger),
            ("other-client.key", stranger_key),
            ("garbage.pem", "this is not PEM\n".to_owned()),
        ] {
            std::fs::write(pki.path(name), pem).unwrap();
        }
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The server's TLS; with `mutual`, client certificates of `ca.crt` only.
    fn server(&self, mutual: bool) -> ServerTls {
        let ca = self.path("ca.crt");
        ServerTls::load(
            Some(&self.path("server.crt")),
            Some(&self.path("server.key")),
            mutual.then_some(ca.as_path()),
        )
        .unwrap()
        .unwrap()
    }

    /// A client trusting `ca`, presenting `identity` (`"client"` or
    /// `"other-client"`) when given.
    fn client(&self, ca: &str, identity: Option<&str>) -> ClientTls {
        let cert = identity.map(|i| self.path(&format!("{i}.crt")));
        let key = identity.map(|i| self.path(&format!("{i}.key")));
        ClientTls::load(Some(&self.path(ca)), cert.as_deref(), key.as_deref())
            .unwrap()
            .unwrap()
    }
}

fn ca_other() -> CertifiedIssuer<'static, KeyPair> {
    ca("another CA")
}

async fn spawn_tls_hasher(tls: ServerTls) -> Spawned {
    Spawned::start(|listener, stop| async move {
        let config = HasherConfig {
            server: dockercoins::server::ServerSettings {
                tls: Some(tls),
                ..Default::default()
            },
            ..HasherConfig::turbo()
        };
        dockercoins::hasher::serve(listener, config, async {
            let _ = stop.await;
        })
        .await
    })
    .await
}

async fn spawn_tls_rng(tls: ServerTls) -> Spawned {
    Spawned::start(|listener, stop| async move {
        let config = RngConfig {
            server: dockercoins::server::ServerSettings {
                tls: Some(tls),
                ..Default::default()
            },
            ..RngConfig::turbo()
        };
        dockercoins::rng::serve(listener, config, async {
            let _ = stop.await;
        })
        .await
    })
    .await
}

/// A resolver that answers `addr` for any name: the URL's host is never
/// looked up, as with Docker's DNS for `rng`.
fn resolver(addr: SocketAddr) -> Resolver {
    Arc::new(move |_host, _port| Box::pin(async move { Ok(vec![addr]) }))
}

fn settings(policy: Policy, tls: Option<ClientTls>) -> BalancerSettings {
    BalancerSettings {
        policy,
        tls,
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(5),
        ..BalancerSettings::default()
    }
}

/// A balanced rng client whose URL is `url` and whose every name resolves
/// to `addr`.
fn backend(url: &str, addr: SocketAddr, tls: Option<ClientTls>) -> BalancedRng {
    BalancedRng::with_resolver(url, &settings(Policy::RoundRobin, tls), resolver(addr)).unwrap()
}

/// A healthcheck of `target` over TLS with `tls`, the certificate checked
/// against `domain` (default: the target's host).
async fn check_tls(
    target: &str,
    service: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
    domain: Option<&str>,
) -> Result<String, Unhealthy> {
    check(&Probe {
        tls: tls.cloned(),
        domain: domain.map(str::to_owned),
        ..Probe::new(target, service, timeout)
    })
    .await
}

/// The whole error, sources included, for assertions on the reason.
fn reason(status: &tonic::Status) -> String {
    dockercoins::telemetry::error_chain::status_reason(status)
}

/// A worker's backend over https: the pool dials 127.0.0.1, and the
/// certificate is checked against the URL's host, `rng`. A URL whose host the
/// certificate does not name fails, although the address dialled (an IP the
/// certificate does name) is the same: the name checked is the host's.
#[tokio::test]
async fn https_backends_call_a_tls_server_and_check_the_url_host() {
    let pki = Pki::new();
    let server = spawn_tls_rng(pki.server(false)).await;
    let port = server.addr.port();
    let tls = pki.client("ca.crt", None);

    let rng = backend(
        &format!("https://rng:{port}"),
        server.addr,
        Some(tls.clone()),
    );
    for _ in 0..3 {
        assert_eq!(generate_through(&rng).await.unwrap(), 32);
    }
    assert_eq!(
        rng.balancer().replicas(),
        [server.addr.to_string()],
        "dials the IP"
    );
    assert_eq!(rng.balancer().served().values().sum::<u64>(), 3);

    let misnamed = backend(
        &format!("https://hasher:{port}"),
        server.addr,
        Some(tls.clone()),
    );
    let status = generate_through(&misnamed).await.unwrap_err();
    assert!(
        reason(&status).contains("not valid for name \"hasher\""),
        "{}",
        reason(&status)
    );

    // Pinned: one connection to the URL itself, over TLS too.
    let pinned = BalancedRng::new(
        &format!("https://localhost:{port}"),
        &settings(Policy::Pinned, Some(tls)),
    )
    .unwrap();
    assert_eq!(generate_through(&pinned).await.unwrap(), 32);
    server.stop().await.unwrap();
}

/// A plaintext client gets nothing from a TLS server, nor does a TLS client
/// that trusts another CA. With TLS 1.3 the failure comes with the first
/// call, so the call's result is what is checked.
#[tokio::test]
async fn plaintext_and_wrong_ca_clients_cannot_call_a_tls_server() {
    let pki = Pki::new();
    let server = spawn_tls_rng(pki.server(false)).await;
    let port = server.addr.port();

    let plaintext = backend(&format!("http://rng:{port}"), server.addr, None);
    // The server reads no TLS handshake and closes the connection.
    generate_through(&plaintext).await.unwrap_err();

    let wrong_ca = backend(
        &format!("https://rng:{port}"),
        server.addr,
        Some(pki.client("other-ca.crt", None)),
    );
    let status = generate_through(&wrong_ca).await.unwrap_err();
    assert!(
        reason(&status).contains("UnknownIssuer"),
        "{}",
        reason(&status)
    );

    // The same server answers a client that trusts the right CA.
    let good = backend(
        &format!("https://rng:{port}"),
        server.addr,
        Some(pki.client("ca.crt", None)),
    );
    assert_eq!(generate_through(&good).await.unwrap(), 32);
    server.stop().await.unwrap();
}

/// Mutual TLS: the server takes only clients whose certificate its CA
/// signed. No certificate: refused; a certificate of another CA: refused;
/// the right one: served.
#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_of_the_servers_ca() {
    let pki = Pki::new();
    let tls = pki.server(true);
    assert!(tls.is_mutual());
    let server = spawn_tls_rng(tls).await;
    let url = format!("https://rng:{}", server.addr.port());

    // The server's alert (CertificateRequired, UnknownCA) races with its
    // closing the connection, so the reason varies: the failure does not.
    let anonymous = backend(&url, server.addr, Some(pki.client("ca.crt", None)));
    let status = generate_through(&anonymous).await.unwrap_err();
    eprintln!("no client certificate: {}", reason(&status));

    let stranger = backend(
        &url,
        server.addr,
        Some(pki.client("ca.crt", Some("other-client"))),
    );
    let status = generate_through(&stranger).await.unwrap_err();
    eprintln!("another CA's client certificate: {}", reason(&status));

    let client = pki.client("ca.crt", Some("client"));
    assert!(client.is_mutual());
    let worker = backend(&url, server.addr, Some(client));
    assert_eq!(generate_through(&worker).await.unwrap(), 32);
    server.stop().await.unwrap();
}

/// `dockercoins healthcheck grpcs://...`: the check over TLS, and with a
/// client certificate over mutual TLS; `--tls-domain` changes the name
/// checked.
#[tokio::test]
async fn the_healthcheck_speaks_grpcs_with_and_without_a_client_certificate() {
    let pki = Pki::new();
    let timeout = Duration::from_secs(5);
    let service = "dockercoins.v1.Rng";

    let server = spawn_tls_rng(pki.server(false)).await;
    let target = format!("grpcs://127.0.0.1:{}", server.addr.port());
    let tls = pki.client("ca.crt", None);
    let healthy = check_tls(&target, service, timeout, Some(&tls), None)
        .await
        .unwrap();
    assert!(healthy.contains("SERVING"), "{healthy}");
    check_tls(&target, service, timeout, Some(&tls), Some("rng"))
        .await
        .unwrap();
    let misnamed = check_tls(&target, service, timeout, Some(&tls), Some("hasher"))
        .await
        .unwrap_err();
    assert!(
        misnamed
            .to_string()
            .contains("not valid for name \"hasher\""),
        "{misnamed}"
    );
    let no_ca = check_tls(&target, service, timeout, None, None)
        .await
        .unwrap_err();
    assert!(matches!(no_ca, Unhealthy::NoCa(_)), "{no_ca}");
    assert!(no_ca.to_string().contains("TLS_CA"), "{no_ca}");
    // grpc:// to a TLS port is not healthy.
    let plaintext = format!("grpc://127.0.0.1:{}", server.addr.port());
    check_tls(&plaintext, service, timeout, Some(&tls), None)
        .await
        .unwrap_err();
    server.stop().await.unwrap();

    let server = spawn_tls_rng(pki.server(true)).await;
    let target = format!("grpcs://127.0.0.1:{}", server.addr.port());
    let refused = check_tls(&target, service, timeout, Some(&tls), None)
        .await
        .unwrap_err();
    eprintln!("without a client certificate: {refused}");
    let mutual = pki.client("ca.crt", Some("client"));
    let healthy = check_tls(&target, service, timeout, Some(&mutual), None)
        .await
        .unwrap();
    assert!(healthy.contains("SERVING"), "{healthy}");

    // The binary reads TLS_CA, TLS_CLIENT_CERT and TLS_CLIENT_KEY from its
    // environment: a container's healthcheck line needs no TLS flag.
    let run = |with_cert: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockercoins"));
        command
            .args(["healthcheck", &target, "--service", service])
            .env("TLS_CA", pki.path("ca.crt"))
            .env_remove("TLS_CLIENT_CERT")
            .env_remove("TLS_CLIENT_KEY");
        if with_cert {
            command
                .env("TLS_CLIENT_CERT", pki.path("client.crt"))
                .env("TLS_CLIENT_KEY", pki.path("client.key"));
        }
        command.output()
    };
    let output = run(true).await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run(false).await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    server.stop().await.unwrap();
}

fn message(result: Result<impl std::fmt::Debug, TlsError>) -> String {
    result.unwrap_err().to_string()
}

/// Bad TLS settings are refused when loaded, each with a message that names
/// the setting and the file, and never quotes a key.
#[test]
fn bad_tls_settings_are_clear_errors() {
    let pki = Pki::new();
    let path = |name: &str| pki.path(name);
    let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
    let garbage = path("garbage.pem");
    let missing = path("missing.pem");
    let server = |c: Option<&Path>, k: Option<&Path>, ca: Option<&Path>| ServerTls::load(c, k, ca);
    let client = |ca: Option<&Path>, c: Option<&Path>, k: Option<&Path>| ClientTls::load(ca, c, k);

    // Nothing set: plaintext, as before.
    assert!(server(None, None, None).unwrap().is_none());
    assert!(client(None, None, None).unwrap().is_none());

    // One of a pair.
    let error = message(server(Some(&cert), None, None));
    assert!(
        error.contains("TLS_CERT") && error.contains("TLS_KEY"),
        "{error}"
    );
    let error = message(server(None, Some(&key), None));
    assert!(
        error.contains("TLS_CERT") && error.contains("TLS_KEY"),
        "{error}"
    );
    let error = message(server(None, None, Some(&ca)));
    assert!(
        error.contains("TLS_CLIENT_CA") && error.contains("TLS_CERT"),
        "{error}"
    );
    let error = message(client(Some(&ca), Some(&path("client.crt")), None));
    assert!(
        error.contains("TLS_CLIENT_CERT") && error.contains("TLS_CLIENT_KEY"),
        "{error}"
    );
    let error = message(client(
        None,
        Some(&path("client.crt")),
        Some(&path("client.key")),
    ));
    assert!(error.contains("TLS_CA"), "{error}");

    // Files that are missing, not PEM, or the wrong kind of PEM.
    for (result, setting, file) in [
        (
            server(Some(&missing), Some(&key), None),
            "TLS_CERT",
            &missing,
        ),
        (
            server(Some(&garbage), Some(&key), None),
            "TLS_CERT",
            &garbage,
        ),
        (server(Some(&key), Some(&key), None), "TLS_CERT", &key),
        (
            server(Some(&cert), Some(&garbage), None),
            "TLS_KEY",
            &garbage,
        ),
        (server(Some(&cert), Some(&cert), None), "TLS_KEY", &cert),
        (
            server(Some(&cert), Some(&key), Some(&garbage)),
            "TLS_CLIENT_CA",
            &garbage,
        ),
    ] {
        let error = message(result);
        assert!(error.contains(setting), "{error}");
        assert!(error.contains(&file.display().to_string()), "{error}");
    }
    for (result, setting, file) in [
        (client(Some(&garbage), None, None), "TLS_CA", &garbage),
        (client(Some(&missing), None, None), "TLS_CA", &missing),
        (
            client(Some(&ca), Some(&garbage), Some(&path("client.key"))),
            "TLS_CLIENT_CERT",
            &garbage,
        ),
        (
            client(Some(&ca), Some(&path("client.crt")), Some(&garbage)),
            "TLS_CLIENT_KEY",
            &garbage,
        ),
    ] {
        let error = message(result);
        assert!(error.contains(setting), "{error}");
        assert!(error.contains(&file.display().to_string()), "{error}");
    }

    // A key that does not belong to the certificate.
    let stranger_key = path("other-client.key");
    let error = message(server(Some(&cert), Some(&stranger_key), None));
    assert!(
        error.contains("TLS_CERT") && error.contains("TLS_KEY") && error.contains("server.crt"),
        "{error}"
    );
    let error = message(client(
        Some(&ca),
        Some(&path("client.crt")),
        Some(&stranger_key),
    ));
    assert!(error.contains("TLS_CLIENT_KEY"), "{error}");

    // A key that looks like PEM but is not: its contents are not quoted.
    let broken = path("broken.key");
    std::fs::write(
        &broken,
        "-----BEGIN PRIVATE KEY-----\nsecretsecret!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let error = message(server(Some(&cert), Some(&broken), None));
    assert!(
        error.contains("TLS_KEY") && !error.contains("secret"),
        "{error}"
    );

    // What is loaded shows its paths, never a key.
    let tls = server(Some(&cert), Some(&key), Some(&ca)).unwrap().unwrap();
    let shown = format!("{tls:?}");
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    assert!(
        shown.contains("server.key") && !shown.contains(key_line),
        "{shown}"
    );
    let tls = client(
        Some(&ca),
        Some(&path("client.crt")),
        Some(&path("client.key")),
    );
    let shown = format!("{:?}", tls.unwrap().unwrap());
    assert!(!shown.contains("PRIVATE"), "{shown}");
}

/// An https URL without a CA is refused when the backend is made, naming
/// the setting (there are no system roots to fall back on).
#[tokio::test]
async fn an_https_backend_without_a_ca_is_refused() {
    let error = BalancedRng::new("https://rng:8001", &BalancerSettings::default()).unwrap_err();
    let error = error.to_string();
    assert!(error.contains("rng") && error.contains("TLS_CA"), "{error}");
}

/// The binary refuses bad TLS files at start-up: exit code 1, a message
/// naming the file and the setting, no panic.
#[tokio::test]
async fn the_binary_refuses_bad_tls_files_with_exit_code_1() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.pem");
    let key = pki.path("server.key");
    for (args, setting) in [
        (
            vec![
                "rng".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--tls-cert".into(),
                garbage.clone().into_os_string(),
                "--tls-key".into(),
                key.clone().into_os_string(),
            ],
            "TLS_CERT",
        ),
        (
            vec![
                "hasher".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--tls-cert".into(),
                pki.path("server.crt").into_os_string(),
            ],
            "TLS_KEY",
        ),
        (
            vec![
                "worker".into(),
                "--rng".into(),
                "https://127.0.0.1:1".into(),
                "--tls-ca".into(),
                garbage.clone().into_os_string(),
            ],
            "TLS_CA",
        ),
        (
            vec![
                "webui".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--rng".into(),
                "https://127.0.0.1:1".into(),
            ],
            "TLS_CA",
        ),
    ] {
        let args: Vec<std::ffi::OsString> = args;
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockercoins"))
            .args(&args)
            .kill_on_drop(true)
            .env_remove("TLS_CERT")
            .env_remove("TLS_KEY")
            .env_remove("TLS_CA")
            .env_remove("TLS_CLIENT_CA")
            .env_remove("TLS_CLIENT_CERT")
            .env_remove("TLS_CLIENT_KEY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output();
        // A service that accepted the settings would run for ever.
        let output = tokio::time::timeout(Duration::from_secs(10), output)
            .await
            .unwrap_or_else(|_| panic!("{args:?}: still running after 10 s"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(setting), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// deploy/tls/make-certs.sh (openssl) makes certificates that rustls takes,
/// under the names docker-compose.tls.yaml uses: rng and hasher serve mutual
/// TLS with them, a worker's backends and the healthcheck reach them with the
/// client certificate, each server certificate names its own service only,
/// and the grpcurl lines of docs/tls.md work.
#[tokio::test]
async fn make_certs_sh_makes_what_the_services_accept() {
    if !have("openssl", "version") {
        return;
    }
    let out = Pki::empty();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/tls/make-certs.sh");
    let made = tokio::process::Command::new("bash")
        .arg(script)
        .arg(&out.dir)
        .output()
        .await
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let file = |name: &str| out.path(name);
    let server_tls = |name: &str| {
        ServerTls::load(
            Some(&file(&format!("{name}.crt"))),
            Some(&file(&format!("{name}.key"))),
            Some(&file("ca.crt")),
        )
        .unwrap()
        .unwrap()
    };
    let rng = spawn_tls_rng(server_tls("rng")).await;
    let hasher = spawn_tls_hasher(server_tls("hasher")).await;
    let client = ClientTls::load(
        Some(&file("ca.crt")),
        Some(&file("client.crt")),
        Some(&file("client.key")),
    )
    .unwrap()
    .unwrap();

    let rng_backend = backend(
        &format!("https://rng:{}", rng.addr.port()),
        rng.addr,
        Some(client.clone()),
    );
    assert_eq!(generate_through(&rng_backend).await.unwrap(), 32);
    let hasher_backend = BalancedHasher::with_resolver(
        &format!("https://hasher:{}", hasher.addr.port()),
        &settings(Policy::RoundRobin, Some(client.clone())),
        resolver(hasher.addr),
    )
    .unwrap();
    let hex = hasher_backend.hash(b"hello".to_vec().into()).await.unwrap();
    assert_eq!(hex, sha256_hex(b"hello"));
    // rng's certificate is not hasher's.
    let impostor = backend(
        &format!("https://hasher:{}", rng.addr.port()),
        rng.addr,
        Some(client.clone()),
    );
    generate_through(&impostor).await.unwrap_err();
    // The compose healthchecks: grpcs://127.0.0.1, the client certificate.
    for (server, service) in [
        (&rng, "dockercoins.v1.Rng"),
        (&hasher, "dockercoins.v1.Hasher"),
    ] {
        let target = format!("grpcs://127.0.0.1:{}", server.addr.port());
        check_tls(
            &target,
            service,
            Duration::from_secs(5),
            Some(&client),
            None,
        )
        .await
        .unwrap();
    }

    if have("grpcurl", "-version") {
        let doc = include_str!("../../docs/tls.md");
        let lines: Vec<&str> = doc
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("grpcurl ") && line.contains(" -cacert "))
            .collect();
        assert!(lines.len() >= 2, "docs/tls.md lost its TLS grpcurl lines");
        for line in lines {
            let command = line
                .replace("deploy/tls/", &format!("{}/", out.dir.display()))
                .replace("localhost:8001", &format!("localhost:{}", rng.addr.port()))
                .replace(
                    "localhost:8002",
                    &format!("localhost:{}", hasher.addr.port()),
                );
            let stdout = run_readme_line(line, &command).await;
            if line.ends_with(" list") {
                assert!(stdout.contains("dockercoins.v1.Rng"), "{stdout}");
            }
        }
    }
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}
