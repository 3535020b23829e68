//! The Kubernetes manifests in `deploy/kubernetes/` agree with the binary: the config in the
//! ConfigMap passes `apphost check`; the readiness probe's path is a `ready` route and the
//! liveness probe's a `health` route on a port the config listens on; the container port and the
//! Service's target port are that port; `terminationGracePeriodSeconds` covers `shutdown_delay +
//! shutdown_timeout`; the readiness request the config names is a route.
//!
//! YAML is read with `saphyr`, the parser the config loader uses.

use std::path::Path;
use std::time::Duration;

use saphyr::{LoadableYamlNode, Yaml};

use crate::support::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// Every document of every manifest file.
fn documents() -> Vec<Yaml<'static>> {
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text: &'static str = std::fs::read_to_string(&f).unwrap().leak();
        let parsed = Yaml::load_from_str(text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        docs.extend(parsed);
    }
    docs
}

fn of_kind<'a>(docs: &'a [Yaml<'static>], kind: &str) -> &'a Yaml<'static> {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in {DIR}"))
}

/// A duration as the config writes it (`5s`, `500ms`, `2m`).
fn duration(text: &str) -> Duration {
    let text = text.trim();
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap());
    let n: u64 = n.parse().unwrap();
    match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        other => panic!("unit {other:?} in {text:?}"),
    }
}

#[test]
fn the_manifests_match_the_config_they_carry() {
    let docs = documents();
    let cm = of_kind(&docs, "ConfigMap");
    let text = cm["data"]["server.yaml"]
        .as_str()
        .expect("data.server.yaml");

    // The config passes `apphost check`.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yaml");
    std::fs::write(&file, text).unwrap();
    let out = run_cli(
        dir.path(),
        &["check", "-c", file.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(0), "apphost check: {out:?}");

    let config = &Yaml::load_from_str(text).unwrap()[0];
    let servers = config["servers"].as_mapping().expect("servers");
    // (port, route path, handler) for every route of every server.
    let mut routes = Vec::new();
    let mut readiness = Vec::new();
    for (_, server) in servers {
        let port: i64 = server["address"]
            .as_str()
            .expect("one address per server here")
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        for (path, handler) in server["routes"].as_mapping().expect("routes") {
            let name = handler
                .as_str()
                .or_else(|| handler["handler"].as_str())
                .expect("handler name");
            routes.push((port, path.as_str().unwrap().to_string(), name.to_string()));
        }
        if let Some(r) = server.as_mapping_get("readiness") {
            readiness.push((port, r["path"].as_str().unwrap().to_string()));
        }
    }
    let route = |port: i64, path: &str| {
        routes
            .iter()
            .find(|(p, r, _)| *p == port && r == path)
            .map(|(_, _, h)| h.as_str())
    };
    for (port, path) in &readiness {
        assert!(route(*port, path).is_some(), "readiness {path} is no route");
    }

    let dep = of_kind(&docs, "Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let probe = |name: &str| {
        let get = &c[name]["httpGet"];
        (
            get["port"].as_integer().expect("numeric probe port"),
            get["path"].as_str().unwrap().to_string(),
        )
    };
    let (rport, rpath) = probe("readinessProbe");
    let (lport, lpath) = probe("livenessProbe");
    assert_eq!(
        route(rport, &rpath),
        Some("ready"),
        "readinessProbe {rpath} on {rport} must be a `ready` route: {routes:?}"
    );
    assert_eq!(
        route(lport, &lpath),
        Some("health"),
        "livenessProbe {lpath} on {lport} must be a `health` route: {routes:?}"
    );
    let container_port = c["ports"][0]["containerPort"].as_integer().unwrap();
    assert_eq!(container_port, rport);

    let svc = of_kind(&docs, "Service");
    assert_eq!(
        svc["spec"]["ports"][0]["targetPort"].as_integer(),
        Some(container_port)
    );
    assert_eq!(
        svc["spec"]["selector"]["app.kubernetes.io/name"].as_str(),
        dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"].as_str()
    );

    // The pod gets the time the host takes to stop.
    let delay = duration(config["shutdown_delay"].as_str().unwrap_or("0s"));
    let timeout = duration(config["shutdown_timeout"].as_str().unwrap_or("60s"));
    let grace = pod["terminationGracePeriodSeconds"].as_integer().unwrap() as u64;
    assert!(
        Duration::from_secs(grace) >= delay + timeout,
        "terminationGracePeriodSeconds {grace} < shutdown_delay {delay:?} + shutdown_timeout {timeout:?}"
    );
    // The delay outlasts the readiness probe noticing the 503.
    let period = c["readinessProbe"]["periodSeconds"]
        .as_integer()
        .unwrap_or(10) as u64;
    let failures = c["readinessProbe"]["failureThreshold"]
        .as_integer()
        .unwrap_or(3) as u64;
    assert!(
        delay > Duration::from_secs(period * failures),
        "shutdown_delay {delay:?} <= the probe's {period} s x {failures}"
    );
    // The config is mounted where the container's arguments look for it.
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(
        args,
        [
            "run",
            "-c",
            Path::new(mount).join("server.yaml").to_str().unwrap()
        ]
    );
}
