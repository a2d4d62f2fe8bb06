//! deploy/k8s, checked without a cluster: the kustomizations are built here
//! (resources, namespace, images, configMapGenerator: the subset they use)
//! and held to what the lab needs. `.ci/run` also validates every manifest
//! against the Kubernetes schemas (kubernetes-validate), and, where kubectl is
//! installed, checks that `kubectl kustomize` builds the same objects.

use serde::Deserialize;
use serde_yaml_ng::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s")
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

/// `kustomize build dir`, for the fields these kustomizations use.
fn build(dir: &Path) -> Vec<Value> {
    let kustomization = documents(&dir.join("kustomization.yaml")).remove(0);
    let known = [
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "images",
        "configMapGenerator",
    ];
    for key in kustomization.as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(
            known.contains(&key),
            "{}: {key} is not emulated by this test",
            dir.display()
        );
    }
    let mut objects = Vec::new();
    for resource in kustomization["resources"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let path = dir.join(resource.as_str().unwrap());
        if path.is_dir() {
            objects.extend(build(&path));
        } else {
            objects.extend(documents(&path));
        }
    }
    for generator in kustomization["configMapGenerator"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let mut data = serde_yaml_ng::Mapping::new();
        for file in generator["files"].as_sequence().unwrap() {
            let (key, path) = file.as_str().unwrap().split_once('=').unwrap();
            let text = std::fs::read_to_string(dir.join(path)).unwrap();
            data.insert(key.into(), text.into());
        }
        let mut config_map = serde_yaml_ng::Mapping::new();
        config_map.insert("apiVersion".into(), "v1".into());
        config_map.insert("kind".into(), "ConfigMap".into());
        let mut metadata = serde_yaml_ng::Mapping::new();
        metadata.insert("name".into(), generator["name"].clone());
        config_map.insert("metadata".into(), metadata.into());
        config_map.insert("data".into(), data.into());
        objects.push(config_map.into());
    }
    if let Some(namespace) = kustomization["namespace"].as_str() {
        for object in &mut objects {
            if str_of(object, "kind") != "Namespace" {
                object["metadata"]
                    .as_mapping_mut()
                    .unwrap()
                    .insert("namespace".into(), namespace.into());
            }
        }
    }
    for image in kustomization["images"].as_sequence().into_iter().flatten() {
        let (name, tag) = (str_of(image, "name"), str_of(image, "newTag"));
        for object in &mut objects {
            for container in containers_mut(object) {
                if container["image"].as_str() == Some(name) {
                    container["image"] = format!("{name}:{tag}").into();
                }
            }
        }
    }
    objects
}

fn containers_mut(object: &mut Value) -> Vec<&mut Value> {
    match object["spec"]["template"]["spec"]["containers"].as_sequence_mut() {
        Some(containers) => containers.iter_mut().collect(),
        None => Vec::new(),
    }
}

fn containers(object: &Value) -> Vec<&Value> {
    object["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

fn name(object: &Value) -> &str {
    str_of(&object["metadata"], "name")
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> BTreeMap<String, &'a Value> {
    objects
        .iter()
        .filter(|o| str_of(o, "kind") == kind)
        .map(|o| (name(o).to_owned(), o))
        .collect()
}

fn workloads(objects: &[Value]) -> BTreeMap<String, &Value> {
    let mut all = of_kind(objects, "Deployment");
    for (name, daemon_set) in of_kind(objects, "DaemonSet") {
        assert!(
            all.insert(name.clone(), daemon_set).is_none(),
            "{name} twice"
        );
    }
    all
}

/// The compose file's service names (anchors and merges applied).
fn compose_services() -> BTreeSet<String> {
    crate::compose::service_names(&crate::compose::compose())
}

/// The ports a Service offers.
fn service_ports(service: &Value) -> BTreeSet<u64> {
    service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect()
}

/// Prometheus's token: its own ServiceAccount, bound to one Role that only
/// reads pods, in this namespace (a Role, not a ClusterRole).
fn prometheus_reads_pods_only(objects: &[Value], pod: &Value, what: &str) {
    let account = str_of(&pod["spec"], "serviceAccountName");
    assert_eq!(account, "prometheus", "{what}");
    let bindings = of_kind(objects, "RoleBinding");
    let binding = bindings[account];
    assert_eq!(str_of(&binding["roleRef"], "kind"), "Role", "{what}");
    assert_eq!(str_of(&binding["subjects"][0], "name"), account, "{what}");
    let role = of_kind(objects, "Role")[str_of(&binding["roleRef"], "name")];
    let rules = role["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), 1, "{what}: {rules:?}");
    let strings = |key: &str| -> Vec<&str> {
        rules[0][key]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    };
    assert_eq!(strings("resources"), ["pods"], "{what}");
    assert_eq!(strings("verbs"), ["get", "list", "watch"], "{what}");
    for (binding, object) in of_kind(objects, "ClusterRoleBinding") {
        assert!(
            !object["subjects"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|s| str_of(s, "name") == account),
            "{what}: {binding} gives Prometheus rights across the cluster"
        );
    }
}

/// Everything every build must hold: names, probes, security, images. The
/// workloads are the compose file's services, and `extra` (an overlay's own).
fn check_common(objects: &[Value], what: &str, extra: &[&str]) {
    let services = of_kind(objects, "Service");
    let workloads = workloads(objects);
    let compose = compose_services();
    // The compose names, so no setting changes (`edge` is Compose's door to
    // the host; in Kubernetes, Services and port-forward do that).
    let expected: BTreeSet<String> = compose
        .iter()
        .filter(|n| *n != "edge")
        .cloned()
        .chain(extra.iter().map(|n| (*n).to_owned()))
        .collect();
    assert_eq!(
        workloads.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{what}"
    );
    for name in services.keys() {
        assert!(
            compose.contains(name) || extra.contains(&name.as_str()),
            "{what}: Service {name} is no compose service"
        );
    }
    for (name, port) in [
        ("rng", 8001),
        ("hasher", 8002),
        ("webui", 8000),
        ("redis", 6379),
        ("otel-collector", 4317),
        ("jaeger", 16686),
    ] {
        assert!(
            service_ports(services[name]).contains(&port),
            "{what}: Service {name} must offer {port}, as in compose"
        );
    }
    // Headless: the name resolves to every pod, and balanced clients reach
    // them all (a ClusterIP pins each HTTP/2 connection to one pod); and
    // the backends of long-lived connections (spans, queries) are reached
    // only once their pod is there, never through a ClusterIP that
    // kube-proxy has not routed yet (deploy/k8s/base/jaeger.yaml says why).
    for name in ["rng", "hasher", "jaeger", "otel-collector", "prometheus"] {
        assert_eq!(
            services[name]["spec"]["clusterIP"].as_str(),
            Some("None"),
            "{what}: {name} must be headless"
        );
    }
    for object in objects {
        assert!(
            object
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .is_some()
                // Cluster-wide kinds have none.
                || ["Namespace", "ClusterRole", "ClusterRoleBinding", "APIService"]
                    .contains(&str_of(object, "kind")),
            "{what}: {} {} has no namespace",
            str_of(object, "kind"),
            name(object)
        );
    }
    for (name, workload) in &workloads {
        let pod = &workload["spec"]["template"];
        let labels = &pod["metadata"]["labels"];
        if let Some(service) = services.get(name) {
            for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
                assert_eq!(
                    labels.get(key),
                    Some(value),
                    "{what}: {name}'s pods and Service"
                );
            }
        }
        let security = &pod["spec"]["securityContext"];
        assert_eq!(
            security["runAsNonRoot"].as_bool(),
            Some(true),
            "{what}: {name}"
        );
        assert!(
            security["runAsUser"].as_u64().is_some_and(|uid| uid != 0),
            "{what}: {name}: a numeric non-root user"
        );
        if name == "prometheus" {
            // It lists pods through the API, and may do nothing else.
            prometheus_reads_pods_only(objects, pod, what);
        } else if name == "prometheus-adapter" {
            // An API server: its own account (checked with its overlay).
            assert_eq!(str_of(&pod["spec"], "serviceAccountName"), name, "{what}");
        } else {
            assert_eq!(
                pod["spec"]["automountServiceAccountToken"].as_bool(),
                Some(false),
                "{what}: {name} needs no API token"
            );
        }
        for container in containers(workload) {
            let image = str_of(container, "image");
            let tag = image
                .rsplit('/')
                .next()
                .unwrap()
                .split_once(':')
                .map(|(_, t)| t);
            assert!(
                tag.is_some_and(|t| !t.is_empty() && t != "latest"),
                "{what}: {name}: image {image} needs a pinned tag"
            );
            let security = &container["securityContext"];
            assert_eq!(
                security["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{what}: {name}"
            );
            assert_eq!(
                security["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{what}: {name}"
            );
            assert_eq!(
                security["capabilities"]["drop"]
                    .as_sequence()
                    .map(Vec::as_slice),
                Some(&["ALL".into()][..]),
                "{what}: {name}"
            );
            for bound in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        container["resources"][bound].get(resource).is_some(),
                        "{what}: {name}: no {bound}.{resource}"
                    );
                }
            }
            // Every long-running pod is probed; those behind a Service are
            // only sent traffic when ready.
            assert!(
                container.get("livenessProbe").is_some(),
                "{what}: {name}: no liveness probe"
            );
            if services.contains_key(name) {
                assert!(
                    container.get("readinessProbe").is_some(),
                    "{what}: {name}: no readiness probe"
                );
            }
            for probe in ["livenessProbe", "readinessProbe"] {
                if let Some(probe) = container.get(probe) {
                    assert!(
                        probe["timeoutSeconds"].as_u64().is_some_and(|t| t >= 2),
                        "{what}: {name}: a probe timeout under 2 s restarts busy pods"
                    );
                }
            }
            if image.starts_with("dockercoins:") {
                let args: Vec<&str> = container["args"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                assert_eq!(args, [name.as_str()], "{what}: runs `dockercoins {name}`");
            }
        }
    }
    // rng and hasher: native gRPC probes on their own health service, and a
    // liveness that takes a minute of failures to restart (a classroom rng
    // with ten workers queued must never be killed).
    for (name, service) in [
        ("rng", "dockercoins.v1.Rng"),
        ("hasher", "dockercoins.v1.Hasher"),
    ] {
        let container = containers(workloads[name])[0];
        for probe in ["livenessProbe", "readinessProbe"] {
            let grpc = &container[probe]["grpc"];
            assert_eq!(
                grpc["service"].as_str(),
                Some(service),
                "{what}: {name} {probe}"
            );
            assert!(service_ports(services[name]).contains(&grpc["port"].as_u64().unwrap()));
        }
        let liveness = &container["livenessProbe"];
        let patience = liveness["periodSeconds"].as_u64().unwrap()
            * liveness["failureThreshold"].as_u64().unwrap();
        assert!(
            patience >= 30,
            "{what}: {name} restarted after {patience} s of failures"
        );
    }
    let webui = containers(workloads["webui"])[0];
    assert_eq!(
        webui["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    // The worker's liveness probes the port it is told to serve it on.
    let worker = containers(workloads["worker"])[0];
    let listen = worker["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("WORKER_HEALTH_LISTEN"))
        .and_then(|e| e["value"].as_str())
        .expect("worker: WORKER_HEALTH_LISTEN");
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let named = worker["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == worker["livenessProbe"]["httpGet"]["port"])
        .expect("worker: the liveness port is named");
    assert_eq!(named["containerPort"].as_u64(), Some(port));
    // OTLP goes to the collector's Service.
    for (name, workload) in &workloads {
        for container in containers(workload) {
            for env in container["env"].as_sequence().into_iter().flatten() {
                if env["name"].as_str() == Some("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    assert_eq!(
                        env["value"].as_str(),
                        Some("http://otel-collector:4317"),
                        "{name}"
                    );
                }
            }
        }
    }
    // The collector mounts the generated ConfigMap, made from the file that
    // Compose mounts.
    let config_maps = of_kind(objects, "ConfigMap");
    let config = &config_maps["otel-collector-config"]["data"]["config.yaml"];
    assert_eq!(
        config.as_str(),
        Some(include_str!("../../deploy/otel/collector.yaml"))
    );
}

#[test]
fn the_kustomization_builds_the_compose_mesh() {
    let objects = build(&root());
    check_common(&objects, "deploy/k8s", &[]);
    let workloads = workloads(&objects);
    assert_eq!(str_of(workloads["rng"], "kind"), "Deployment");
    assert_eq!(
        of_kind(&objects, "Namespace").keys().collect::<Vec<_>>(),
        ["dockercoins"]
    );
}

#[test]
fn the_lab_overlay_runs_one_rng_per_node() {
    let objects = build(&root().join("lab-rng-daemonset"));
    check_common(&objects, "lab-rng-daemonset", &[]);
    let workloads = workloads(&objects);
    assert_eq!(str_of(workloads["rng"], "kind"), "DaemonSet");
    assert!(!of_kind(&objects, "Deployment").contains_key("rng"));
    // The same pod as the Deployment's, only the kind differs.
    let base = build(&root());
    let deployment = of_kind(&base, "Deployment")["rng"];
    assert_eq!(
        workloads["rng"]["spec"]["template"],
        deployment["spec"]["template"]
    );
}

/// The autoscaling overlay: rng scaled on its lane wait, a custom metric
/// that prometheus-adapter makes from the series rng serves and Prometheus
/// labels with their pod; not on CPU.
#[test]
fn the_autoscale_overlay_scales_rng_on_its_lane_wait() {
    let objects = build(&root().join("autoscale-rng"));
    check_common(&objects, "autoscale-rng", &["prometheus-adapter"]);
    let hpa = of_kind(&objects, "HorizontalPodAutoscaler")["rng"];
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (str_of(target, "kind"), str_of(target, "name")),
        ("Deployment", "rng")
    );
    let metrics = hpa["spec"]["metrics"].as_sequence().unwrap();
    assert_eq!(metrics.len(), 1, "one signal, the lane wait: {metrics:?}");
    let pods = &metrics[0]["pods"];
    assert_eq!(str_of(&pods["metric"], "name"), "rng_lane_wait_seconds");
    // 0.1 s, as container.training's lab.
    assert_eq!(str_of(&pods["target"], "averageValue"), "100m");
    // The adapter's rule makes that metric from rng's own histogram, per
    // pod and namespace...
    let config_maps = of_kind(&objects, "ConfigMap");
    let rules: Value = serde_yaml_ng::from_str(
        config_maps["prometheus-adapter-config"]["data"]["config.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let rule = &rules["rules"][0];
    assert!(str_of(rule, "seriesQuery").starts_with("rng_lane_wait_seconds_count{"));
    assert_eq!(str_of(&rule["name"], "as"), "rng_lane_wait_seconds");
    for label in ["namespace", "pod"] {
        assert_eq!(
            str_of(&rule["resources"]["overrides"][label], "resource"),
            label
        );
    }
    let query = str_of(rule, "metricsQuery");
    assert!(
        query.contains("rng_lane_wait_seconds_sum")
            && query.contains("rng_lane_wait_seconds_count")
    );
    // ...which rng serves...
    let metrics_rs = include_str!("../../services/rng/metrics.rs");
    assert!(
        metrics_rs.contains("\"rng_lane_wait\""),
        "rng no longer serves rng_lane_wait_seconds"
    );
    // ...and Prometheus scrapes with those labels.
    let prometheus: Value = serde_yaml_ng::from_str(
        config_maps["prometheus-config"]["data"]["prometheus.yml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let relabels = prometheus["scrape_configs"][0]["relabel_configs"]
        .as_sequence()
        .unwrap();
    for label in ["namespace", "pod"] {
        assert!(
            relabels.iter().any(|r| str_of(r, "target_label") == label),
            "Prometheus does not label series with {label}"
        );
    }
    // The adapter asks the Prometheus Service of the build, and the API
    // registration sends the custom metrics API to the adapter's Service.
    let adapter = containers(workloads(&objects)["prometheus-adapter"])[0];
    let url = adapter["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--prometheus-url="))
        .next()
        .unwrap();
    assert_eq!(url, "http://prometheus.dockercoins.svc:9090/");
    assert!(service_ports(of_kind(&objects, "Service")["prometheus"]).contains(&9090));
    let api = of_kind(&objects, "APIService")["v1beta1.custom.metrics.k8s.io"];
    assert_eq!(
        str_of(&api["spec"]["service"], "name"),
        "prometheus-adapter"
    );
    assert_eq!(str_of(&api["spec"]["service"], "namespace"), "dockercoins");
}

#[test]
fn the_worker_autoscaler_example_targets_the_worker() {
    let hpa = documents(&root().join("worker-hpa.yaml")).remove(0);
    assert_eq!(str_of(&hpa, "kind"), "HorizontalPodAutoscaler");
    assert_eq!(str_of(&hpa["metadata"], "namespace"), "dockercoins");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (str_of(target, "kind"), str_of(target, "name")),
        ("Deployment", "worker")
    );
    let (min, max) = (
        hpa["spec"]["minReplicas"].as_u64(),
        hpa["spec"]["maxReplicas"].as_u64(),
    );
    assert!(min.unwrap() >= 1 && min <= max);
}

/// Where kubectl is installed, its kustomize builds the same objects as the
/// emulation above (same kinds and names), so the emulation can be trusted.
#[test]
fn kubectl_kustomize_agrees_where_installed() {
    for dir in [
        root(),
        root().join("lab-rng-daemonset"),
        root().join("autoscale-rng"),
    ] {
        let output = match std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
        {
            Ok(output) => output,
            Err(_) => {
                eprintln!("kubectl is not installed: skipping");
                return;
            }
        };
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        let built: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).unwrap())
            .collect();
        let names = |objects: &[Value], hashed: bool| -> BTreeSet<(String, String)> {
            objects
                .iter()
                .map(|o| {
                    // kubectl names a generated ConfigMap with a hash suffix.
                    let name = name(o);
                    let name = match str_of(o, "kind") {
                        "ConfigMap" if hashed => name.rsplit_once('-').map_or(name, |(n, _)| n),
                        _ => name,
                    };
                    (str_of(o, "kind").to_owned(), name.to_owned())
                })
                .collect()
        };
        assert_eq!(
            names(&built, true),
            names(&build(&dir), false),
            "{}",
            dir.display()
        );
    }
}
