//! The shipped `Dockerfile` on a real Docker engine: the image runs the embedded default, `docker
//! stop` lets a request in flight finish and exits 0, the documented upgrade (the executable on a
//! mounted volume, replaced by copy and rename) restarts inside the container with PID 1 kept and
//! no failed request from outside, a ConfigMap-style config directory swap triggers a checked
//! restart, and `docker kill -s KILL` leaves no process behind.
//!
//! No registry is reachable here, so no base image can be pulled: the test builds the shipped
//! Dockerfile with its `BUILDER` and `BASE` arguments pointing at two images imported from local
//! material. `BASE` is the C library this binary links against (from `ldd`) and `/tmp`;
//! `BUILDER` is that plus `/bin/sh`, the test binary (debug info stripped) where the build stage
//! expects its output, and a `cargo` that only checks that it is there: the Dockerfile's own
//! steps (COPY of the context, the RUN, the COPY between stages, user, entry point, stop signal)
//! all run as shipped.
//!
//! Without an engine the tests print why and pass, except in CI (`CI=true`), where a missing
//! engine fails them. Container ports are published on 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::fleet::KeepAliveHammer;
use crate::harness::*;
use crate::support::*;

/// The test's image tags end in this process's pid, so parallel runs never share one, and the
/// images of runs that are gone can be removed.
const REPO: &str = "apphost-it";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// `docker ARGS`, which must succeed; its stdout, trimmed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether an engine answers. Without one: false (the caller returns) and why is printed, or a
/// panic in CI.
fn engine() -> bool {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let up = UP.get_or_init(|| {
        match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(format!("cannot run docker: {e}")),
        }
    });
    match up {
        Ok(()) => true,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and no Docker engine: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: no Docker engine here ({why})");
            false
        }
    }
}

/// The test binary with its debug info stripped (the image needs no 100 MB of it), or as it is
/// where `objcopy` is missing.
fn stripped_binary(dir: &Path) -> PathBuf {
    let out = dir.join("apphost");
    let stripped = Command::new("objcopy")
        .args(["--strip-debug", BIN])
        .arg(&out)
        .status();
    if !stripped.is_ok_and(|st| st.success()) {
        // No binutils: the whole binary, debug info and all.
        std::fs::copy(BIN, &out).unwrap();
    }
    out
}

/// The shared libraries `ldd` lists for `exe` (and the loader), copied into `root` at their
/// paths.
fn copy_libs(exe: &Path, root: &Path) {
    let out = Command::new("ldd").arg(exe).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        let Some(path) = path else { continue };
        let to = root.join(path.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&path, &to).unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
    }
}

/// `docker import` the directory `root` as `tag`.
fn import(root: &Path, tag: &str) {
    let mut tar = Command::new("tar")
        .args(["-C"])
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar");
    let out = Command::new("docker")
        .args(["import", "-", tag])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .expect("docker import");
    assert!(tar.wait().unwrap().success(), "tar of {}", root.display());
    assert!(
        out.status.success(),
        "docker import {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Remove the images of earlier runs whose process is gone.
fn remove_stale_images() {
    let list = docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for image in list.lines() {
        let Some((repo, tag)) = image.split_once(':') else {
            continue;
        };
        let ours =
            repo == REPO || repo == format!("{REPO}-builder") || repo == format!("{REPO}-base");
        let pid: Option<u32> = tag.parse().ok();
        if ours && pid.is_some_and(|p| p != std::process::id() && !process_alive(p)) {
            let _ = docker(&["rmi", "-f", image]);
        }
    }
}

/// The image built from the shipped Dockerfile, once per test process.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        remove_stale_images();
        let pid = std::process::id();
        let tmp = tempfile::tempdir().unwrap();
        let exe = stripped_binary(tmp.path());

        let base = tmp.path().join("base");
        copy_libs(&exe, &base);
        std::fs::create_dir_all(base.join("tmp")).unwrap();
        mode(&base.join("tmp"), 0o1777);
        let base_tag = format!("{REPO}-base:{pid}");
        import(&base, &base_tag);

        let builder = tmp.path().join("builder");
        copy_libs(&exe, &builder);
        copy_libs(Path::new("/bin/sh"), &builder);
        std::fs::create_dir_all(builder.join("bin")).unwrap();
        std::fs::copy("/bin/sh", builder.join("bin/sh")).unwrap();
        let release = builder.join("src/target/release");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::copy(&exe, release.join("apphost")).unwrap();
        let cargo = builder.join("usr/local/bin/cargo");
        std::fs::create_dir_all(cargo.parent().unwrap()).unwrap();
        std::fs::write(
            &cargo,
            "#!/bin/sh\n# Stands in for the toolchain: the binary was built on the host.\n\
             [ \"$*\" = \"build --release --locked --bin apphost\" ] || { echo \"cargo $*?\" >&2; exit 1; }\n\
             [ -x target/release/apphost ] || { echo 'no prebuilt binary' >&2; exit 1; }\n",
        )
        .unwrap();
        mode(&cargo, 0o755);
        let builder_tag = format!("{REPO}-builder:{pid}");
        import(&builder, &builder_tag);

        let tag = format!("{REPO}:{pid}");
        let root = env!("CARGO_MANIFEST_DIR");
        let out = Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .args(["--build-arg", &format!("BUILDER={builder_tag}")])
            .args(["--build-arg", &format!("BASE={base_tag}")])
            .arg(root)
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .output()
            .expect("docker build");
        assert!(
            out.status.success(),
            "docker build of {root}/Dockerfile: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tag
    })
}

/// A running container, removed (with `docker rm -f`) when dropped.
struct Container {
    name: String,
    /// The host port published for the container's port.
    port: u16,
}

impl Container {
    /// `docker run -d` of the image with `args` (before the image: options; after: the
    /// command), the container's `inner` port published on 127.0.0.1.
    fn run(inner: u16, opts: &[&str], cmd: &[&str]) -> Container {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{REPO}-{}-{n}", std::process::id());
        let port = low_port();
        let publish = format!("127.0.0.1:{port}:{inner}");
        let mut args = vec!["run", "-d", "--name", &name, "-p", &publish];
        args.extend_from_slice(opts);
        let image = image();
        args.push(image);
        args.extend_from_slice(cmd);
        docker_ok(&args);
        Container { name, port }
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "-f", format, &self.name])
    }

    /// Wait until `path` answers 200 from outside the container; the response.
    fn wait_answer(&self, path: &str) -> Resp {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = try_get(self.port, path)
                && r.status == 200
            {
                return r;
            }
            if Instant::now() > deadline {
                panic!(
                    "{path} on 127.0.0.1:{} does not answer 200; logs:\n{}",
                    self.port,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the container has stopped; its exit code.
    fn wait_stopped(&self, timeout: Duration) -> i32 {
        wait_until(timeout, "the container to stop", || {
            (self.inspect("{{.State.Running}}") == "false").then_some(())
        });
        self.inspect("{{.State.ExitCode}}").parse().unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

/// A directory the container (uid 10001) can read, holding `server.yaml` for one server on
/// `port` with `/pid`, `/ready`, `/v` (hello `v`) and a 2 s `/sleep`.
fn config_text(port: u16, v: &str) -> String {
    format!(
        "graceful: true\nshutdown_delay: 500ms\nshutdown_timeout: 10s\n\
         watch: {{ settle: 200ms }}\n\
         servers:\n  s1:\n    address: \":{port}\"\n    readiness: /ready\n    routes:\n      \
         \"/pid\": pid\n      \"/ready\": ready\n      \"/v\": {{ handler: hello, text: {v} }}\n      \
         \"/sleep\": {{ handler: sleep, duration: 2s }}\n"
    )
}

fn readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    mode(dir.path(), 0o755);
    dir
}

#[test]
fn docker_run_serves_the_embedded_default_and_docker_stop_finishes_the_request_in_flight() {
    if !engine() {
        return;
    }
    let c = Container::run(8199, &[], &[]);
    let r = c.wait_answer("/");
    assert!(r.body_str().contains("哈喽"), "{}", r.body_str());
    // PID 1 is the supervisor: the worker is another process.
    let worker = c.wait_answer("/pid").body_str().trim().to_string();
    assert_ne!(worker, "1");

    // The embedded default's /sleep takes 10 s; `docker stop` (SIGTERM) must let it finish.
    let sleep = InFlight::start(c.port);
    let sleep_started = sleep.started;
    let name = c.name.clone();
    let stop = std::thread::spawn(move || docker(&["stop", "-t", "30", &name]));
    let (resp, done) = sleep.finish();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body_str().lines().collect::<Vec<_>>(),
        [worker.as_str(), worker.as_str()],
        "both lines of the /sleep answer"
    );
    assert!(stop.join().unwrap().status.success());
    assert_eq!(c.wait_stopped(Duration::from_secs(30)), 0, "{}", c.logs());
    assert!(
        done - sleep_started >= Duration::from_secs(9),
        "the /sleep answer ended {:?} after it began (10 s)",
        done - sleep_started
    );
    let logs = c.logs();
    assert!(logs.contains("SIGTERM received"), "{logs}");
}

#[test]
fn an_upgrade_on_a_mounted_volume_keeps_pid_1_and_fails_no_request() {
    if !engine() {
        return;
    }
    let dir = readable_dir();
    let port = low_port();
    std::fs::write(dir.path().join("server.yaml"), config_text(port, "one")).unwrap();
    let exe = dir.path().join("apphost");
    std::fs::copy(BIN, &exe).unwrap();
    let volume = format!("{}:/opt/app", dir.path().display());
    let c = Container::run(
        port,
        &["-v", &volume, "--entrypoint", "/opt/app/apphost"],
        &["run", "-c", "/opt/app/server.yaml"],
    );
    // The container's port is the config's; published on another host port.
    let first = c.wait_answer("/pid").body_str().trim().to_string();
    let pid1 = c.inspect("{{.State.Pid}}");
    wait_until(T, "the supervisor to count the worker ready", || {
        c.logs().contains("worker ready").then_some(())
    });

    let hammer = Hammer::start(c.port);
    let keep = KeepAliveHammer::start(c.port);
    // The documented upgrade: copy next to it, rename over it.
    let tmp = dir.path().join(".apphost.new");
    std::fs::copy(BIN, &tmp).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    let second = wait_until(T, "a new worker behind /pid", || {
        let p = try_get(c.port, "/pid").ok()?.body_str().trim().to_string();
        (p != first && !p.is_empty()).then_some(p)
    });
    wait_until(T, "the restart to be logged done", || {
        c.logs().contains("restart done").then_some(())
    });
    let rep = hammer.finish();
    let kept = keep.finish();
    assert!(
        rep.failures.is_empty(),
        "{} failed of {}: {:?}; logs:\n{}",
        rep.failures.len(),
        rep.ok + rep.failures.len(),
        &rep.failures[..rep.failures.len().min(5)],
        c.logs()
    );
    assert!(kept.failures.is_empty(), "keep-alive: {:?}", kept.failures);
    assert!(
        rep.ok > 20 && kept.ok > 20,
        "{} / {} requests",
        rep.ok,
        kept.ok
    );
    assert_eq!(
        c.inspect("{{.State.Pid}}"),
        pid1,
        "PID 1 is the same process"
    );
    assert_eq!(c.inspect("{{.State.Running}}"), "true");
    assert_ne!(second, first);
}

/// A Kubernetes ConfigMap volume's layout: `server.yaml -> ..data/server.yaml`, `..data ->
/// ..<timestamp>`; `publish` swaps `..data` the way the kubelet does.
struct ConfigMapDir {
    dir: tempfile::TempDir,
    current: Option<PathBuf>,
    n: u32,
}

impl ConfigMapDir {
    fn new(text: &str) -> ConfigMapDir {
        let mut v = ConfigMapDir {
            dir: readable_dir(),
            current: None,
            n: 0,
        };
        v.publish(text);
        std::os::unix::fs::symlink("..data/server.yaml", v.dir.path().join("server.yaml")).unwrap();
        v
    }

    fn publish(&mut self, text: &str) {
        self.n += 1;
        let name = format!("..2026_11_29_16_00_{:02}", self.n);
        let real = self.dir.path().join(&name);
        std::fs::create_dir(&real).unwrap();
        mode(&real, 0o755);
        std::fs::write(real.join("server.yaml"), text).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        if let Some(old) = self.current.replace(real) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

#[test]
fn a_configmap_style_swap_triggers_a_checked_restart() {
    if !engine() {
        return;
    }
    let port = low_port();
    let mut cm = ConfigMapDir::new(&config_text(port, "one"));
    let volume = format!("{}:/etc/apphost:ro", cm.dir.path().display());
    let c = Container::run(
        port,
        &["-v", &volume],
        &["run", "-c", "/etc/apphost/server.yaml"],
    );
    assert_eq!(c.wait_answer("/v").body_str(), "one\n");
    let first = c.wait_answer("/pid").body_str();

    // A broken config is checked and refused: the serving generation stays.
    cm.publish(&config_text(port, "two").replace("2s", "two seconds"));
    wait_until(T, "the refused config in the log", || {
        c.logs().contains("invalid duration").then_some(())
    });
    assert_eq!(get(c.port, "/v").body_str(), "one\n");
    assert_eq!(get(c.port, "/pid").body_str(), first);

    cm.publish(&config_text(port, "three"));
    wait_until(T, "the new config to serve", || {
        (try_get(c.port, "/v").ok()?.body_str() == "three\n").then_some(())
    });
    // The old generation reads its drain a moment after the new one is ready (more under load)
    // and may answer a fresh connection meanwhile: wait for it to stop, not for one answer.
    wait_until(T, "a new worker to answer /pid", || {
        (try_get(c.port, "/pid").ok()?.body_str() != first).then_some(())
    });
    assert_eq!(c.inspect("{{.State.Running}}"), "true");
}

#[test]
fn docker_kill_leaves_no_process_behind() {
    if !engine() {
        return;
    }
    let dir = readable_dir();
    let port = low_port();
    std::fs::write(dir.path().join("server.yaml"), config_text(port, "one")).unwrap();
    let volume = format!("{}:/etc/apphost:ro", dir.path().display());
    let c = Container::run(
        port,
        &["-v", &volume],
        &["run", "-c", "/etc/apphost/server.yaml"],
    );
    c.wait_answer("/pid");
    // Host pids of every process in the container (the supervisor, its worker, its standby).
    let top = docker_ok(&["top", &c.name, "-o", "pid"]);
    let pids: Vec<u32> = top.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(pids.len() >= 2, "docker top: {top}");
    docker_ok(&["kill", "-s", "KILL", &c.name]);
    c.wait_stopped(T);
    for pid in &pids {
        wait_until(T, &format!("process {pid} to be gone"), || {
            (!process_alive(*pid)).then_some(())
        });
    }
}

/// The image's user, stop signal and entry point are as shipped.
#[test]
fn the_image_runs_unprivileged_with_sigterm() {
    if !engine() {
        return;
    }
    let img = image();
    let got = docker_ok(&[
        "inspect",
        "-f",
        "{{.Config.User}} {{.Config.StopSignal}} {{json .Config.Entrypoint}}",
        img,
    ]);
    assert_eq!(got, "10001:10001 SIGTERM [\"/usr/local/bin/apphost\"]");
}
