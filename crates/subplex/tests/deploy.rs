//! What ships beside the binary, checked without Docker or helm: `docker/compose.yaml`
//! and `docker/Dockerfile` agree with `docker/gateway.toml`, the documented config path
//! and each other; the Helm chart's values cover every key its templates use, its
//! rendered `gateway.toml` passes validation, and its probes, grace period and checksum
//! are wired as docs/deployment.md says.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;
use subplex::Config;

/// The config path inside the image, as docs/deployment.md documents it.
const CONFIG_PATH: &str = "/etc/subplex/gateway.toml";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) => text.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_compose_file_agrees_with_its_gateway_config() {
    let config = Config::load(&repo("docker/gateway.toml")).expect("docker/gateway.toml is valid");
    let compose = yaml("docker/compose.yaml");
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["postgres", "hasura", "yoga", "apollo", "subplex"])
    );

    let subplex = &compose["services"]["subplex"];
    assert_eq!(subplex["build"]["dockerfile"], "docker/Dockerfile");
    let ports = strings(&subplex["ports"]);
    let listen = config.server.listen.port();
    let admin = config
        .admin_listen
        .expect("the admin listener is on")
        .port();
    assert!(
        config.server.listen.ip().is_unspecified(),
        "reachable from outside"
    );
    assert_eq!(
        ports,
        [format!("{listen}:{listen}"), format!("{admin}:{admin}")]
    );
    let volumes = strings(&subplex["volumes"]);
    assert!(
        volumes.contains(&format!("./gateway.toml:{CONFIG_PATH}:ro")),
        "{volumes:?}"
    );
    // The hook script is found relative to the config, as on the host.
    assert!(
        volumes.contains(&"./hooks:/etc/subplex/hooks:ro".to_owned()),
        "{volumes:?}"
    );
    let grace = subplex["stop_grace_period"].as_str().unwrap();
    let grace_s: u64 = grace.trim_end_matches('s').parse().unwrap();
    assert!(
        grace_s * 1000 > config.server.shutdown_grace.as_millis() as u64,
        "Docker's SIGKILL must come after the drain"
    );

    // Every upstream is a service of the file, on the port that service listens on.
    for upstream in &config.upstreams {
        let url = &upstream.http_url;
        let host = url.host_str().unwrap();
        let service = &compose["services"][host];
        assert!(
            service.is_mapping(),
            "upstream {host} is not a compose service"
        );
        let command = strings(&service["command"]);
        let port = url.port().unwrap().to_string();
        match command.iter().position(|arg| arg == "--port") {
            Some(at) => {
                assert_eq!(command[at + 1], port, "{host}");
                let host_at = command.iter().position(|arg| arg == "--host").unwrap();
                assert_eq!(command[host_at + 1], "0.0.0.0", "{host}");
            }
            // Hasura's image serves its default port.
            None => assert_eq!((host, port.as_str()), ("hasura", "8080")),
        }
    }
}

/// The Dockerfile's last stage, as (instruction, rest of line) pairs, continuation lines
/// joined.
fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
    let joined = dockerfile.replace("\\\n", " ");
    let mut stage = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        if instruction == "FROM" {
            stage.clear();
        }
        stage.push((instruction.to_owned(), rest.trim().to_owned()));
    }
    stage
}

#[test]
fn the_image_runs_unprivileged_with_a_healthcheck_and_the_documented_config_path() {
    let dockerfile = read("docker/Dockerfile");
    assert!(
        dockerfile.contains("FROM rust:1-slim-bookworm AS build"),
        "multi-stage"
    );
    let stage = final_stage(&dockerfile);
    let get = |instruction: &str| -> Vec<&str> {
        stage
            .iter()
            .filter(|(name, _)| name == instruction)
            .map(|(_, rest)| rest.as_str())
            .collect()
    };
    assert_eq!(get("FROM"), ["gcr.io/distroless/cc-debian12:nonroot"]);
    assert_eq!(get("USER"), ["65532:65532"], "not root");
    assert_eq!(get("ENTRYPOINT"), [r#"["/usr/local/bin/subplex"]"#]);
    assert_eq!(get("CMD"), [format!(r#"["--config", "{CONFIG_PATH}"]"#)]);
    let healthcheck = get("HEALTHCHECK");
    assert_eq!(healthcheck.len(), 1);
    assert!(
        healthcheck[0].ends_with(&format!(
            r#"CMD ["/usr/local/bin/subplex", "--config", "{CONFIG_PATH}", "healthcheck"]"#
        )),
        "{healthcheck:?}"
    );
    let config = Config::load(&repo("docker/gateway.toml")).unwrap();
    let exposed = format!(
        "{} {}",
        config.server.listen.port(),
        config.admin_listen.unwrap().port()
    );
    assert_eq!(get("EXPOSE"), [exposed.as_str()]);
    let deployment = read("docs/deployment.md");
    assert!(deployment.contains(CONFIG_PATH));
    assert!(read(".dockerignore").lines().any(|line| line == "target"));
}

/// The value at a dotted path (`admin.port`) of the chart's values.
fn value<'a>(values: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(values, |node, key| &node[key])
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `gateway.toml` as templates/configmap.yaml renders it with the default values. The
/// template uses only `{{ .Values.x }}` and `{{- .Values.x | nindent 4 }}`, which this
/// renders as helm does.
fn rendered_gateway_toml(values: &Value) -> String {
    let template = read("deploy/helm/subplex/templates/configmap.yaml");
    let (_, body) = template.split_once("gateway.toml: |\n").unwrap();
    let mut text = String::new();
    for line in body.lines() {
        let line = line.strip_prefix("    ").unwrap_or(line);
        let trimmed = line.trim();
        if let Some(inner) = trimmed
            .strip_prefix("{{- .Values.")
            .and_then(|rest| rest.strip_suffix(" | nindent 4 }}"))
        {
            text.push_str(&scalar(value(values, inner)));
            continue;
        }
        let mut line = line.to_owned();
        while let Some(start) = line.find("{{ .Values.") {
            let end = start + line[start..].find("}}").unwrap() + 2;
            let path = line[start + "{{ .Values.".len()..end - 2].trim();
            line.replace_range(start..end, &scalar(value(values, path)));
        }
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// Every `.Values.a.b` path the chart's templates use.
fn template_value_paths() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let dir = repo("deploy/helm/subplex/templates");
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (at, _) in text.match_indices(".Values.") {
            let path: String = text[at + ".Values.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            paths.insert(path);
        }
    }
    paths
}

#[test]
fn the_chart_renders_a_valid_config_and_wires_probes_grace_and_checksum() {
    let chart = yaml("deploy/helm/subplex/Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "subplex");
    let values = yaml("deploy/helm/subplex/values.yaml");
    for path in template_value_paths() {
        assert!(
            !value(&values, &path).is_null(),
            "templates use .Values.{path}, which values.yaml does not set"
        );
    }

    let toml = rendered_gateway_toml(&values);
    let config = Config::parse(&toml, "configmap gateway.toml")
        .unwrap_or_else(|err| panic!("{err}\n{toml}"));
    assert_eq!(
        config.server.listen.port().to_string(),
        scalar(value(&values, "service.port"))
    );
    assert_eq!(
        config.admin_listen.map(|a| a.port().to_string()),
        Some(scalar(value(&values, "admin.port")))
    );
    let grace_ms: u64 = scalar(value(&values, "shutdownGraceMs")).parse().unwrap();
    assert_eq!(config.server.shutdown_grace.as_millis() as u64, grace_ms);

    let deployment = read("deploy/helm/subplex/templates/deployment.yaml");
    for wired in [
        "terminationGracePeriodSeconds: {{ add (div .Values.shutdownGraceMs 1000) .Values.terminationGraceMarginSeconds }}",
        "checksum/config: {{ include (print $.Template.BasePath \"/configmap.yaml\") . | sha256sum }}",
        "path: /readyz",
        "path: /healthz",
        "mountPath: /etc/subplex",
        &format!("args: [\"--config\", \"{CONFIG_PATH}\", \"--log-format\", \"json\"]"),
        "runAsUser: 65532",
    ] {
        assert!(deployment.contains(wired), "deployment.yaml lacks {wired}");
    }
    let readiness = deployment.find("readinessProbe").unwrap();
    let liveness = deployment.find("livenessProbe").unwrap();
    assert!(deployment[readiness..liveness].contains("path: /readyz"));
    assert!(deployment[liveness..].contains("path: /healthz"));
    assert!(read("deploy/helm/subplex/templates/pdb.yaml").contains("kind: PodDisruptionBudget"));
    assert!(
        read("deploy/helm/subplex/templates/hpa.yaml").contains("kind: HorizontalPodAutoscaler")
    );
}
