//! The compose file's invariants, checked without Docker: docker-compose.yaml,
//! docker-compose.turbo.yaml and deploy/otel/collector.yaml are parsed (YAML
//! anchors and `<<` merges applied, as Compose does) and held to what the lab
//! and the binary need. tests/compose-e2e.sh runs the same file for real.
//! One test asks Compose itself (`deploy/offline.sh list`, no engine needed)
//! and is skipped, outside CI, where no Compose is installed.

use clap::Parser;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeSet;

const COMPOSE: &str = include_str!("../../docker-compose.yaml");
const TURBO: &str = include_str!("../../docker-compose.turbo.yaml");
const TLS: &str = include_str!("../../docker-compose.tls.yaml");
const SLOW_RNG: &str = include_str!("../../docker-compose.slow-rng.yaml");
const WEBUI_DEV: &str = include_str!("../../docker-compose.webui-dev.yaml");
const MAKE_CERTS: &str = include_str!("../../deploy/tls/make-certs.sh");
const COLLECTOR: &str = include_str!("../../deploy/otel/collector.yaml");
const SETTINGS_DOC: &str = include_str!("../../docs/settings.md");

/// The services that run the dockercoins binary, each with its subcommand.
const DOCKERCOINS: [&str; 5] = ["rng", "hasher", "worker", "webui", "edge"];
/// The ones that make spans (edge forwards bytes: nothing to trace).
const TRACED: [&str; 4] = ["rng", "hasher", "worker", "webui"];
/// The services the lab scales: no host port of their own.
const SCALED: [&str; 3] = ["rng", "hasher", "worker"];
/// Services without a healthcheck, on purpose (the file says why): the worker
/// and edge serve nothing of their own to probe; the collector's image has
/// nothing to probe with.
const NO_HEALTHCHECK: [&str; 3] = ["worker", "edge", "otel-collector"];

fn parse(text: &str) -> Value {
    let mut value: Value = serde_yaml_ng::from_str(text).expect("valid YAML");
    value.apply_merge().expect("valid << merges");
    value
}

pub(crate) fn compose() -> Value {
    parse(COMPOSE)
}

fn services(file: &Value) -> &Mapping {
    file["services"].as_mapping().expect("a services mapping")
}

pub(crate) fn service_names(file: &Value) -> BTreeSet<String> {
    services(file)
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

fn service<'a>(file: &'a Value, name: &str) -> &'a Value {
    file["services"]
        .get(name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// `environment:` as (key, value) pairs, from either the mapping or the
/// `KEY=VALUE` list form.
fn environment(service: &Value) -> Vec<(String, String)> {
    match service.get("environment") {
        None => Vec::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().unwrap().to_owned(), value)
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let item = item.as_str().unwrap();
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Some(other) => panic!("environment is neither a mapping nor a list: {other:?}"),
    }
}

fn env_value(service: &Value, key: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// `${VAR:-default}` and `${VAR-default}` -> default, as with VAR unset.
fn with_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        let default = inner
            .split_once(":-")
            .or_else(|| inner.split_once('-'))
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("${{{inner}}} has no default"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Published host ports -> container ports, from the short (`"8001:8001"`,
/// `"127.0.0.1:8001:8001/tcp"`) and the long syntax.
fn published(service: &Value) -> Vec<(u16, u16)> {
    let Some(ports) = service.get("ports") else {
        return Vec::new();
    };
    ports
        .as_sequence()
        .expect("ports is a list")
        .iter()
        .map(|port| match port {
            Value::String(s) => {
                let s = s.split('/').next().unwrap();
                let parts: Vec<&str> = s.split(':').collect();
                assert!(parts.len() >= 2, "port {s} publishes on a random host port");
                let host = parts[parts.len() - 2].parse().expect("host port");
                let target = parts[parts.len() - 1].parse().expect("container port");
                (host, target)
            }
            Value::Mapping(m) => {
                let num = |k: &str| -> u16 {
                    match &m[k] {
                        Value::Number(n) => n.as_u64().unwrap() as u16,
                        Value::String(s) => s.parse().unwrap(),
                        other => panic!("port {k}: {other:?}"),
                    }
                };
                (num("published"), num("target"))
            }
            other => panic!("a port as a bare number publishes a random host port: {other:?}"),
        })
        .collect()
}

/// Container ports a service offers to the others: `expose` and published
/// ports' targets, plus the ports the binary listens on.
fn offered_ports(name: &str, service: &Value) -> BTreeSet<u16> {
    let mut ports: BTreeSet<u16> = published(service).into_iter().map(|(_, t)| t).collect();
    if let Some(expose) = service.get("expose").and_then(Value::as_sequence) {
        for port in expose {
            let port = match port {
                Value::Number(n) => n.as_u64().unwrap() as u16,
                Value::String(s) => s.split('/').next().unwrap().parse().unwrap(),
                other => panic!("expose: {other:?}"),
            };
            ports.insert(port);
        }
    }
    match name {
        "rng" => ports.insert(8001),
        "hasher" => ports.insert(8002),
        "webui" => ports.insert(8000),
        "redis" => ports.insert(6379),
        _ => false,
    };
    ports
}

/// `scheme://host:port...` -> (host, port), the port defaulted by scheme.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next().unwrap();
    let authority = authority.rsplit('@').next().unwrap();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (
            authority,
            match scheme {
                "redis" => 6379,
                "https" => 443,
                _ => 80,
            },
        ),
    };
    Some((host.to_owned(), port))
}

/// The binary's settings: every backticked ALL_CAPS name in docs/settings.md.
fn documented_settings() -> BTreeSet<String> {
    SETTINGS_DOC
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.len() > 2
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

fn is_known_setting(key: &str, documented: &BTreeSet<String>) -> bool {
    documented.contains(key) || key.starts_with("OTEL_") || key == "RUST_LOG" || key == "LOG_FORMAT"
}

#[test]
fn the_files_parse_and_define_the_whole_mesh() {
    let file = compose();
    let names = service_names(&file);
    let expected: BTreeSet<String> = [
        "rng",
        "hasher",
        "worker",
        "webui",
        "edge",
        "redis",
        "otel-collector",
        "jaeger",
        "prometheus",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, expected);
    // Compose v1 (1.29) reads the Compose Specification only without `version:`
    // or with a 3.x one; v2 ignores it. Keep none.
    assert!(file.get("version").is_none(), "drop the version key");
    parse(TURBO);
    parse(SLOW_RNG);
    parse(COLLECTOR);
}

#[test]
fn every_long_running_service_has_a_healthcheck() {
    let file = compose();
    for (name, svc) in services(&file) {
        let name = name.as_str().unwrap();
        let check = svc
            .get("healthcheck")
            .unwrap_or_else(|| panic!("{name}: no healthcheck (or an explicit disable)"));
        if check.get("disable") == Some(&Value::Bool(true)) {
            assert!(
                NO_HEALTHCHECK.contains(&name),
                "{name}: healthcheck disabled; only {NO_HEALTHCHECK:?} may"
            );
            continue;
        }
        let test = check["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: healthcheck test is not an exec list"));
        assert_eq!(
            test[0].as_str(),
            Some("CMD"),
            "{name}: CMD, not CMD-SHELL: the dockercoins image has no shell"
        );
        for key in ["interval", "timeout", "retries"] {
            assert!(
                check.get(key).is_some(),
                "{name}: healthcheck without {key}"
            );
        }
        if DOCKERCOINS.contains(&name) {
            let args: Vec<&str> = test.iter().map(|a| a.as_str().unwrap()).collect();
            assert_eq!(args[1], "/usr/local/bin/dockercoins", "{name}: {args:?}");
            assert_eq!(args[2], "healthcheck", "{name}: {args:?}");
            // It probes its own container, on its own port.
            let (host, port) = host_port(args[3]).unwrap();
            assert_eq!(host, "127.0.0.1", "{name}: {args:?}");
            assert!(
                offered_ports(name, svc).contains(&port),
                "{name}: probes port {port}"
            );
        }
    }
}

#[test]
fn no_container_name_anywhere() {
    let file = compose();
    for (name, svc) in services(&file) {
        assert!(
            svc.get("container_name").is_none(),
            "{name:?}: container_name"
        );
    }
    let uncommented = COMPOSE
        .lines()
        .map(|l| l.split('#').next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!uncommented.contains("container_name"));
}

#[test]
fn the_lab_ports_are_published_and_the_lab_services_scale() {
    let file = compose();
    for name in SCALED {
        assert!(
            service(&file, name).get("ports").is_none(),
            "{name}: a published port breaks --scale {name}=N (edge publishes rng and hasher)"
        );
    }
    for (name, port) in [
        ("edge", 8001),
        ("edge", 8002),
        ("webui", 8000),
        ("jaeger", 16686),
    ] {
        assert!(
            published(service(&file, name)).contains(&(port, port)),
            "{name} must publish {port}:{port}"
        );
    }
    let mut seen = BTreeSet::new();
    for (name, svc) in services(&file) {
        for (host, _) in published(svc) {
            assert!(
                seen.insert(host),
                "host port {host} published twice ({name:?})"
            );
        }
    }
    // edge forwards each published port to the service the lab expects there
    // (its defaults do: the file sets nothing).
    let edge = service(&file, "edge");
    assert!(env_value(edge, "EDGE_ROUTES").is_none());
    let cli = dockercoins::cli::Cli::try_parse_from(["dockercoins", "edge"]).unwrap();
    let dockercoins::cli::Command::Edge(args) = cli.command else {
        unreachable!()
    };
    let routes = args.routes;
    let forwarded: BTreeSet<(u16, String, u16)> = routes
        .iter()
        .map(|r| (r.listen.port(), r.host.clone(), r.port))
        .collect();
    assert_eq!(
        forwarded,
        BTreeSet::from([
            (8001, "rng".to_owned(), 8001),
            (8002, "hasher".to_owned(), 8002)
        ])
    );
    for route in &routes {
        assert!(
            route.listen.ip().is_unspecified(),
            "{route}: listen on every interface"
        );
        assert!(
            published(edge).contains(&(route.listen.port(), route.listen.port())),
            "{route}: edge listens on a port it does not publish"
        );
        assert!(offered_ports(&route.host, service(&file, &route.host)).contains(&route.port));
    }
}

#[test]
fn no_ip_address_only_service_names() {
    let file = compose();
    let names = service_names(&file);
    let mut urls = 0;
    for (name, svc) in services(&file) {
        for (key, value) in environment(svc) {
            if key == "JAEGER_URL" {
                // Not for a service: the page's readers follow it, from the
                // host, to the port the file publishes for Jaeger.
                let default = value
                    .strip_prefix("${JAEGER_URL:-")
                    .and_then(|v| v.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("{name:?}: JAEGER_URL={value}: overridable"));
                let (host, port) = host_port(default).unwrap();
                assert_eq!(host, "localhost", "{name:?}: JAEGER_URL={value}");
                let jaeger = service(&file, "jaeger");
                assert!(published(jaeger).iter().any(|(h, _)| *h == port), "{value}");
                continue;
            }
            if key == "OTEL_EXPORTER_OTLP_ENDPOINT" || key.ends_with("_URL") {
                let (host, port) = host_port(&value)
                    .unwrap_or_else(|| panic!("{name:?}: {key}={value} is not a URL"));
                assert!(
                    names.contains(&host),
                    "{name:?}: {key}={value}: {host} is not a service of the file"
                );
                assert!(
                    offered_ports(&host, service(&file, &host)).contains(&port),
                    "{name:?}: {key}={value}: {host} does not offer port {port}"
                );
                urls += 1;
            }
        }
    }
    assert!(
        urls >= 4,
        "the OTLP endpoint is set on the dockercoins services"
    );
    // The binary's own defaults (docs/settings.md) name this file's
    // services, which is why the containers need no RNG_URL and the like.
    for (setting, default) in [
        ("RNG_URL", "http://rng:8001"),
        ("HASHER_URL", "http://hasher:8002"),
        ("REDIS_URL", "redis://redis:6379"),
    ] {
        let row = SETTINGS_DOC
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&format!("`{setting}`")))
            .unwrap_or_else(|| panic!("docs/settings.md has no row for {setting}"));
        assert!(row.contains(&format!("`{default}`")), "{row}");
        let (host, port) = host_port(default).unwrap();
        assert!(offered_ports(&host, service(&file, &host)).contains(&port));
    }
    let uncommented: String = COMPOSE
        .lines()
        .map(|l| l.split('#').next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let dotted_quad = uncommented.split(|c: char| !(c.is_ascii_digit() || c == '.'));
    for word in dotted_quad {
        let parts: Vec<&str> = word.split('.').collect();
        let ip = parts.len() == 4 && parts.iter().all(|p| p.parse::<u8>().is_ok());
        // 127.0.0.1 inside a healthcheck is the container's own loopback;
        // 0.0.0.0 in a listen address is every interface of the container.
        assert!(
            !ip || word == "127.0.0.1" || word == "0.0.0.0",
            "an IP address in the file: {word}"
        );
    }
}

/// `depends_on` in the list form, the only one `docker stack deploy` takes
/// (Compose then starts the dependencies first, without waiting for their
/// health: the worker and webui wait for their backends themselves).
#[test]
fn dependencies_start_first_and_never_include_tracing() {
    let file = compose();
    let names = service_names(&file);
    let deps_of = |name: &str| -> Vec<String> {
        match service(&file, name).get("depends_on") {
            None => Vec::new(),
            Some(deps) => deps
                .as_sequence()
                .unwrap_or_else(|| panic!("{name}: depends_on as a list (docker stack deploy)"))
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect(),
        }
    };
    for name in &names {
        for dep in deps_of(name) {
            assert!(names.contains(&dep), "{name} depends on unknown {dep}");
            if DOCKERCOINS.contains(&name.as_str()) {
                assert!(
                    !["otel-collector", "jaeger"].contains(&dep.as_str()),
                    "{name} depends on {dep}: a tracing backend that is down must never block the mesh"
                );
            }
        }
    }
    for name in ["worker", "webui"] {
        assert_eq!(deps_of(name), ["rng", "hasher", "redis"], "{name}");
    }
    assert_eq!(deps_of("edge"), ["rng", "hasher"]);
}

/// The file deploys as a Swarm stack (`docker stack deploy -c
/// docker-compose.yaml dockercoins`): images named, no option the stack
/// refuses, `deploy:` keys for memory and updates, and rng and hasher in
/// DNS round-robin mode so the balanced workers see every task.
#[test]
fn the_file_deploys_as_a_swarm_stack() {
    let file = compose();
    for (name, svc) in services(&file) {
        let name = name.as_str().unwrap();
        assert!(
            svc.get("image").is_some(),
            "{name}: a stack needs an image name"
        );
        // Refused by `docker stack deploy` ("Compose file contains
        // unsupported options"), found by running it on Docker 20.10.
        for refused in ["mem_limit", "memswap_limit", "cpus", "mem_reservation"] {
            assert!(
                svc.get(refused).is_none(),
                "{name}: {refused}: use deploy.resources"
            );
        }
        let deploy = svc
            .get("deploy")
            .unwrap_or_else(|| panic!("{name}: no deploy"));
        assert!(
            deploy["resources"]["limits"]["memory"].as_str().is_some(),
            "{name}: deploy.resources.limits.memory"
        );
        let dnsrr = deploy.get("endpoint_mode").and_then(Value::as_str) == Some("dnsrr");
        assert_eq!(
            dnsrr,
            ["rng", "hasher"].contains(&name),
            "{name}: endpoint_mode"
        );
        // dnsrr services cannot publish in Swarm's ingress mode.
        if dnsrr {
            assert!(
                published(svc).is_empty(),
                "{name}: dnsrr and a published port"
            );
        }
    }
    let update = &service(&file, "redis")["deploy"]["update_config"]["order"];
    assert_eq!(update.as_str(), Some("stop-first"), "one Redis at a time");
}

#[test]
fn one_image_for_the_dockercoins_services_a_pinned_tag_for_the_others() {
    let file = compose();
    let mut dockercoins_images = BTreeSet::new();
    for (name, svc) in services(&file) {
        let name = name.as_str().unwrap();
        let image = with_defaults(
            svc["image"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no image name")),
        );
        let last = image.rsplit('/').next().unwrap();
        let tag = last
            .split_once(':')
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("{name}: untagged image {image}"));
        assert!(!tag.is_empty() && tag != "latest", "{name}: {image}");
        if DOCKERCOINS.contains(&name) {
            dockercoins_images.insert(image.clone());
            assert_eq!(
                svc["build"]["dockerfile"].as_str(),
                Some("deploy/Dockerfile")
            );
            let command: Vec<&str> = svc["command"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{name}: command as an exec list"))
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            assert_eq!(command, [name], "{name} runs `dockercoins {name}`");
        } else {
            assert!(svc.get("build").is_none(), "{name}");
            // Pinned to a release: a number in the tag (`v3.6.0` as
            // Prometheus writes it), not a moving name.
            let version = tag.strip_prefix('v').unwrap_or(tag);
            assert!(
                version.chars().next().unwrap().is_ascii_digit() && version.contains('.'),
                "{name}: pin a version, not {image}"
            );
        }
    }
    assert_eq!(dockercoins_images.len(), 1, "{dockercoins_images:?}");
    assert!(
        dockercoins_images
            .first()
            .unwrap()
            .starts_with("dockercoins:")
    );
}

#[test]
fn every_service_restarts_is_bounded_and_stops_quickly() {
    let file = compose();
    for (name, svc) in services(&file) {
        assert_eq!(svc["restart"].as_str(), Some("unless-stopped"), "{name:?}");
        let memory = svc
            .get("deploy")
            .map(|d| &d["resources"]["limits"]["memory"])
            .unwrap_or_else(|| panic!("{name:?}: no memory limit"));
        assert!(memory.as_str().is_some_and(|m| !m.is_empty()), "{name:?}");
        assert_eq!(svc["read_only"].as_bool(), Some(true), "{name:?}");
        let grace = svc["stop_grace_period"]
            .as_str()
            .unwrap_or_else(|| panic!("{name:?}"));
        let secs: u32 = grace.strip_suffix('s').unwrap().parse().unwrap();
        assert!(secs <= 10, "{name:?}: stop_grace_period {grace}");
    }
    let redis = service(&file, "redis");
    let command: Vec<&str> = redis["command"]
        .as_sequence()
        .expect("redis: an explicit command, so any redis-server image behaves the same")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(command[0], "redis-server");
}

#[test]
fn the_dockercoins_services_are_traced_and_set_only_known_settings() {
    let file = compose();
    let documented = documented_settings();
    assert!(
        documented.contains("RNG_DELAY_MS"),
        "docs/settings.md: settings table not found"
    );
    for name in TRACED {
        let svc = service(&file, name);
        for (key, value) in environment(svc) {
            assert!(
                is_known_setting(&key, &documented),
                "{name}: {key} is not a setting of the binary (docs/settings.md) nor OTEL_*/RUST_LOG/LOG_FORMAT"
            );
            assert!(!value.is_empty(), "{name}: {key} is empty");
        }
        assert_eq!(env_value(svc, "OTEL_SERVICE_NAME").as_deref(), Some(name));
        assert_eq!(
            env_value(svc, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            Some("http://otel-collector:4317")
        );
        assert_eq!(
            env_value(svc, "OTEL_TRACES_SAMPLER").as_deref(),
            Some("parentbased_traceidratio")
        );
        assert_eq!(
            env_value(svc, "OTEL_TRACES_SAMPLER_ARG").as_deref(),
            Some("1.0"),
            "{name}: classroom mode samples every trace"
        );
        // Classroom mode is the binary's defaults: no timing overridden here.
        for key in [
            "RNG_DELAY_MS",
            "RNG_LANES",
            "HASHER_DELAY_MS",
            "WORKER_DELAY_MS",
            "WORKER_BATCH",
        ] {
            assert!(
                env_value(svc, key).is_none(),
                "{name}: {key} belongs in the turbo file"
            );
        }
    }
}

#[test]
fn turbo_overrides_only_known_settings_of_existing_services() {
    let base = compose();
    let turbo = parse(TURBO);
    let names = service_names(&base);
    let documented = documented_settings();
    let mut all = Vec::new();
    for (name, svc) in services(&turbo) {
        let name = name.as_str().unwrap();
        assert!(
            names.contains(name),
            "turbo overrides unknown service {name}"
        );
        for key in svc.as_mapping().unwrap().keys() {
            let key = key.as_str().unwrap();
            // Settings and memory only; Redis also gets a memory cap.
            let allowed =
                key == "environment" || key == "deploy" || (name == "redis" && key == "command");
            assert!(allowed, "turbo {name}: overrides {key}");
        }
        if let Some(command) = svc.get("command") {
            let base = &service(&base, name)["command"];
            let base = base.as_sequence().unwrap();
            let turbo = command.as_sequence().unwrap();
            assert_eq!(
                &turbo[..base.len()],
                &base[..],
                "turbo redis keeps the base flags"
            );
        }
        for (key, value) in environment(svc) {
            assert!(
                is_known_setting(&key, &documented),
                "turbo {name}: unknown {key}"
            );
            all.push((name.to_owned(), key, value));
        }
    }
    let get = |svc: &str, key: &str| {
        all.iter()
            .find(|(s, k, _)| s == svc && k == key)
            .map(|(_, _, v)| v.as_str())
            .unwrap_or_else(|| panic!("turbo: {svc} {key} unset"))
    };
    assert_eq!(get("rng", "RNG_DELAY_MS"), "0");
    assert_eq!(get("rng", "RNG_LANES"), "0");
    assert_eq!(get("hasher", "HASHER_DELAY_MS"), "0");
    assert_eq!(get("worker", "WORKER_DELAY_MS"), "0");
    assert_eq!(get("worker", "WORKER_BATCH"), "8192");
    assert_eq!(get("worker", "WORKER_CONCURRENCY"), "4");
    for svc in TRACED {
        let ratio: f64 = get(svc, "OTEL_TRACES_SAMPLER_ARG").parse().unwrap();
        assert!(ratio > 0.0 && ratio <= 0.05, "turbo {svc}: sample little");
    }
}

#[test]
fn the_collector_receives_otlp_and_exports_to_a_service_of_the_file() {
    let file = compose();
    let collector = parse(COLLECTOR);
    let names = service_names(&file);
    // Mounted where the collector reads it.
    let svc = service(&file, "otel-collector");
    let mounts: Vec<&str> = svc["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./deploy/otel/collector.yaml:")),
        "{mounts:?}"
    );
    let offered = offered_ports("otel-collector", svc);
    for (protocol, port) in [("grpc", 4317), ("http", 4318)] {
        let endpoint = collector["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
            .as_str()
            .unwrap();
        assert_eq!(
            endpoint,
            format!("0.0.0.0:{port}"),
            "listen beyond localhost"
        );
        assert!(
            offered.contains(&port),
            "otel-collector does not expose {port}"
        );
    }
    let pipeline = &collector["service"]["pipelines"]["traces"];
    let list = |key: &str| -> Vec<String> {
        pipeline[key]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(list("processors"), ["memory_limiter", "batch"]);
    for (kind, section) in [
        ("receivers", "receivers"),
        ("processors", "processors"),
        ("exporters", "exporters"),
    ] {
        for id in list(kind) {
            // A connector is an exporter of one pipeline and a receiver of
            // another.
            assert!(
                collector[section].get(id.as_str()).is_some()
                    || collector["connectors"].get(id.as_str()).is_some(),
                "pipeline names {kind} {id}, not configured"
            );
        }
    }
    // The span metrics: a connector out of the traces, into a metrics
    // pipeline whose Prometheus exporter the compose file exposes.
    let span_metrics = &collector["service"]["pipelines"]["metrics/spanmetrics"];
    assert_eq!(span_metrics["receivers"][0].as_str(), Some("spanmetrics"));
    assert_eq!(span_metrics["exporters"][0].as_str(), Some("prometheus"));
    let endpoint = collector["exporters"]["prometheus"]["endpoint"]
        .as_str()
        .unwrap();
    let port: u16 = endpoint.rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(
        offered.contains(&port),
        "otel-collector does not expose {port}"
    );
    let exporters: Vec<String> = list("exporters")
        .into_iter()
        .filter(|id| collector["connectors"].get(id.as_str()).is_none())
        .collect();
    assert!(!exporters.is_empty());
    for id in exporters {
        // The OTLP/gRPC exporter: `otlp_grpc` since collector 0.144 (`otlp`
        // is its deprecated alias); there is no `jaeger` exporter any more.
        let kind = id.split('/').next().unwrap();
        assert_eq!(kind, "otlp_grpc", "{id}");
        let endpoint = collector["exporters"][id.as_str()]["endpoint"]
            .as_str()
            .unwrap();
        let (host, port) = endpoint
            .rsplit_once(':')
            .map(|(h, p)| {
                (
                    h.trim_start_matches("http://").to_owned(),
                    p.parse::<u16>().unwrap(),
                )
            })
            .unwrap();
        assert!(
            names.contains(&host),
            "exporter {id} sends to unknown {host}"
        );
        assert!(
            offered_ports(&host, service(&file, &host)).contains(&port),
            "{host} does not offer {port}"
        );
    }
}

/// The TLS override: TLS and mutual TLS on every gRPC hop, from files that
/// deploy/tls/make-certs.sh makes, mounted read-only; healthchecks over TLS.
#[test]
fn the_tls_override_secures_every_grpc_hop_with_mounted_files() {
    const DIR: &str = "/etc/dockercoins/tls/";
    let base = compose();
    let tls = parse(TLS);
    let documented = documented_settings();
    assert_eq!(
        service_names(&tls),
        ["hasher", "rng", "webui", "worker"]
            .into_iter()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
    );
    for (name, svc) in services(&tls) {
        let name = name.as_str().unwrap();
        for key in svc.as_mapping().unwrap().keys() {
            let key = key.as_str().unwrap();
            assert!(
                ["environment", "volumes", "healthcheck"].contains(&key),
                "tls {name}: overrides {key}"
            );
        }
        let volumes: Vec<&str> = svc["volumes"]
            .as_sequence()
            .unwrap_or_else(|| panic!("tls {name}: no volumes"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            volumes,
            [format!("./deploy/tls:{}:ro", DIR.trim_end_matches('/'))],
            "tls {name}: the certificates, read-only"
        );
        let env = environment(svc);
        for (key, value) in &env {
            assert!(
                is_known_setting(key, &documented),
                "tls {name}: unknown {key}"
            );
            if key.starts_with("TLS_") {
                let file = value
                    .strip_prefix(DIR)
                    .unwrap_or_else(|| panic!("tls {name}: {key}={value} is not under {DIR}"));
                assert!(
                    MAKE_CERTS.contains(file),
                    "tls {name}: {key}={value}: make-certs.sh does not make {file}"
                );
            }
        }
        let get = |key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("tls {name}: {key} unset"))
        };
        // Every service presents the client certificate: worker and webui to
        // their backends, rng and hasher in their healthchecks.
        for key in ["TLS_CA", "TLS_CLIENT_CERT", "TLS_CLIENT_KEY"] {
            get(key);
        }
        match name {
            "rng" | "hasher" => {
                assert_eq!(get("TLS_CERT"), format!("{DIR}{name}.crt"));
                assert_eq!(get("TLS_KEY"), format!("{DIR}{name}.key"));
                assert_eq!(get("TLS_CLIENT_CA"), get("TLS_CA"), "mutual TLS");
                // The same probe as the base file's, over TLS.
                let probe = |file: &Value| -> Vec<String> {
                    file["services"][name]["healthcheck"]["test"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_owned())
                        .collect()
                };
                let plain = probe(&base);
                let secure = probe(&tls);
                let grpc = plain[3].strip_prefix("grpc://").unwrap();
                assert_eq!(secure[3], format!("grpcs://{grpc}"), "tls {name}");
                assert_eq!(secure[..3], plain[..3]);
                assert_eq!(secure[4..], plain[4..]);
            }
            _ => {
                for (key, backend) in [("RNG_URL", "rng"), ("HASHER_URL", "hasher")] {
                    let url = get(key);
                    assert!(url.starts_with("https://"), "tls {name}: {key}={url}");
                    let (host, port) = host_port(url).unwrap();
                    assert_eq!(host, backend, "tls {name}: {key}={url}");
                    assert!(offered_ports(&host, service(&base, &host)).contains(&port));
                }
                assert!(
                    svc.get("healthcheck").is_none(),
                    "tls {name}: its probe is unchanged"
                );
            }
        }
    }
}

/// The images run as a non-root user, every container has a read-only root
/// filesystem, and no secret can reach an image: the Dockerfile copies only
/// the sources (and, for `prebuilt`, the one binary), and .dockerignore keeps
/// .env, keys and certificates out of the build context.
#[test]
fn images_run_as_non_root_read_only_and_carry_no_secrets() {
    const DOCKERFILE: &str = include_str!("../../deploy/Dockerfile");
    const DOCKERIGNORE: &str = include_str!("../../.dockerignore");
    let mut stages: Vec<(String, Option<String>)> = Vec::new();
    for line in DOCKERFILE.lines().map(str::trim) {
        if let Some(from) = line.strip_prefix("FROM ") {
            let name = from.rsplit(" AS ").next().unwrap_or(from).to_owned();
            stages.push((name, None));
        } else if let Some(user) = line.strip_prefix("USER ") {
            stages.last_mut().expect("USER before FROM").1 = Some(user.to_owned());
        } else if let Some(copy) = line.strip_prefix("COPY ") {
            if copy.starts_with("--from=") {
                continue;
            }
            let words: Vec<&str> = copy.split_whitespace().collect();
            for source in &words[..words.len() - 1] {
                assert!(
                    [
                        "Cargo.toml",
                        "Cargo.lock",
                        "build.rs",
                        "proto",
                        "services",
                        "deploy/.prebuilt",
                        "target/release/dockercoin[s]",
                    ]
                    .contains(source),
                    "the Dockerfile copies {source}: only sources and the binary go in"
                );
            }
        }
    }
    for target in ["prebuilt", "runtime"] {
        let user = stages
            .iter()
            .find(|(name, _)| name == target)
            .unwrap_or_else(|| panic!("no stage {target}"))
            .1
            .clone()
            .unwrap_or_else(|| panic!("{target}: no USER, so root"));
        let uid = user.split(':').next().unwrap();
        assert!(
            uid.parse::<u32>().is_ok_and(|uid| uid != 0),
            "{target}: USER {user} (numeric and not root, so Kubernetes' runAsNonRoot can check it)"
        );
    }
    assert_eq!(stages.last().unwrap().0, "runtime", "the default target");
    let ignored: Vec<&str> = DOCKERIGNORE.lines().map(str::trim).collect();
    for secret in [".env", "**/*.pem", "**/*.key"] {
        assert!(
            ignored.contains(&secret),
            ".dockerignore must list {secret}"
        );
    }
    let file = compose();
    for (name, svc) in services(&file) {
        assert_eq!(svc["read_only"].as_bool(), Some(true), "{name:?}");
        assert!(svc.get("privileged").is_none(), "{name:?}");
    }
}

/// The Swarm lab step: rng global, nothing else; and the e2e's no-IPVS file
/// changes only endpoint modes and publishing modes of existing services.
#[test]
fn the_swarm_overrides_change_only_what_they_say() {
    let base = compose();
    let global = parse(include_str!("../../docker-compose.rng-global.yaml"));
    assert_eq!(services(&global).len(), 1);
    assert_eq!(
        service(&global, "rng")["deploy"]["mode"].as_str(),
        Some("global")
    );
    assert!(
        service(&base, "rng")["deploy"].get("replicas").is_none(),
        "replicas cannot go with mode: global"
    );
    let no_ipvs = parse(include_str!("../swarm-no-ipvs.yaml"));
    for (name, svc) in services(&no_ipvs) {
        let name = name.as_str().unwrap();
        assert!(service_names(&base).contains(name), "{name}");
        for key in svc.as_mapping().unwrap().keys() {
            assert!(
                ["deploy", "ports"].contains(&key.as_str().unwrap()),
                "{name}: {key:?}"
            );
        }
        assert_eq!(
            svc["deploy"]["endpoint_mode"].as_str(),
            Some("dnsrr"),
            "{name}"
        );
        for port in svc
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            assert_eq!(port["mode"].as_str(), Some("host"), "{name}");
            let target = port["target"].as_u64().unwrap() as u16;
            assert!(
                published(service(&base, name)).contains(&(target, target)),
                "{name}: {target}"
            );
        }
    }
}

/// The slow-rng override adds exactly one service, an rng like the others
/// (extended from the base file's, so the same image, command, healthcheck
/// and tracing) but slower, known to DNS as `rng` on the default network,
/// with no host port (it is a replica, not a door), and overrides nothing of
/// the base file's services.
#[test]
fn the_slow_rng_override_adds_exactly_one_rng_replica_under_the_name_rng() {
    let base = compose();
    let slow = parse(SLOW_RNG);
    let added = services(&slow);
    assert_eq!(added.len(), 1, "one service, no override of the others");
    let (name, svc) = added.iter().next().unwrap();
    let name = name.as_str().unwrap();
    assert!(
        !service_names(&base).contains(name),
        "{name} is a base service"
    );
    assert_eq!(svc["extends"]["file"].as_str(), Some("docker-compose.yaml"));
    assert_eq!(svc["extends"]["service"].as_str(), Some("rng"));
    // What `extends` makes of it: rng's settings, the override's on top.
    let rng = service(&base, "rng");
    let documented = documented_settings();
    let mut env = environment(rng);
    for (key, value) in environment(svc) {
        assert!(is_known_setting(&key, &documented), "{name}: unknown {key}");
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(get("RNG_DELAY_MS"), Some("300"));
    assert_eq!(get("OTEL_SERVICE_NAME"), Some("rng"), "traced as rng");
    for key in svc.as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(
            ["extends", "environment", "networks"].contains(&key),
            "{name}: {key} should come from rng"
        );
    }
    assert!(published(rng).is_empty(), "rng has no host port to inherit");
    let aliases: Vec<&str> = svc["networks"]["default"]["aliases"]
        .as_sequence()
        .expect("aliases on the default network")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(aliases, ["rng"]);
    // The balanced clients resolve `rng`: what the alias joins.
    for client in ["worker", "webui"] {
        let url = env_value(service(&base, client), "RNG_URL");
        assert!(
            url.as_deref().is_none_or(|u| u.contains("//rng:")),
            "{client}: {url:?}"
        );
    }
}

/// The "update a service" override: webui, and only webui, reads its page
/// from the repository's services/webui, mounted read-only where
/// WEBUI_ASSETS_DIR says, and nothing else changes.
#[test]
fn the_webui_dev_override_serves_the_page_from_the_sources_read_only() {
    let dev = parse(WEBUI_DEV);
    let changed = services(&dev);
    assert_eq!(changed.len(), 1, "webui only");
    let webui = &dev["services"]["webui"];
    let documented = documented_settings();
    let env = environment(webui);
    for (key, _) in &env {
        assert!(is_known_setting(key, &documented), "unknown {key}");
    }
    let dir = env_value(webui, "WEBUI_ASSETS_DIR").expect("WEBUI_ASSETS_DIR");
    let volumes: Vec<&str> = webui["volumes"]
        .as_sequence()
        .expect("a volume")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(volumes, [format!("./services/webui:{dir}:ro")]);
    let sources = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services/webui");
    for file in ["index.html", "app.js", "style.css"] {
        assert!(sources.join(file).is_file(), "services/webui/{file}");
    }
    for key in webui.as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(["environment", "volumes"].contains(&key), "webui: {key}");
    }
}

/// `dockercoins doctor` checks the images and host ports of this file: its
/// lists must be this file's.
#[test]
fn doctor_knows_the_stacks_images_and_ports() {
    let base = compose();
    let mut images: Vec<String> = services(&base)
        .values()
        .filter_map(|svc| svc["image"].as_str())
        .map(|image| image.replace("${DOCKERCOINS_TAG:-dev}", "dev"))
        .collect();
    images.sort();
    images.dedup();
    let mut known: Vec<String> = dockercoins::doctor::STACK_IMAGES
        .iter()
        .map(|s| s.to_string())
        .collect();
    known.sort();
    assert_eq!(images, known);
    let mut ports: Vec<u16> = services(&base)
        .values()
        .flat_map(published)
        .map(|(host, _)| host)
        .collect();
    ports.sort();
    ports.dedup();
    let mut doctor = dockercoins::doctor::STACK_PORTS.to_vec();
    doctor.sort();
    assert_eq!(ports, doctor);
}

/// `deploy/offline.sh` saves the images Compose itself names for the file and
/// each override: `doctor`'s list, which says whether a laptop has loaded
/// them, must be that same list (a new image in an override, or a new tag,
/// shows here).
#[test]
fn offline_saves_the_images_doctor_checks() {
    let compose_v2 = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !compose_v2 && !crate::support::have("docker-compose", "version") {
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/offline.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("list")
        // The file's default tag, as doctor checks it.
        .env_remove("DOCKERCOINS_TAG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "offline.sh list: {stderr}");
    let listed: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    let mut doctor = dockercoins::doctor::STACK_IMAGES.to_vec();
    doctor.sort();
    assert_eq!(
        listed, doctor,
        "offline.sh list (sorted) vs doctor::STACK_IMAGES"
    );
}
