//! Tests of the walk: defaults, YAML/TOML equivalence, error positions and messages, listener
//! conflicts, route params, loading and lookup.

use std::ffi::OsStr;
use std::fs;

use super::tree::Value;
use super::*;

fn yaml(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, Format::Yaml, ConfigSource::Embedded)
}

fn toml(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, Format::Toml, ConfigSource::Embedded)
}

/// Parse as if from `dir/server.{yaml,toml}`.
fn in_dir(dir: &Path, text: &str, format: Format) -> Result<Config, ConfigError> {
    let name = match format {
        Format::Yaml => "server.yaml",
        Format::Toml => "server.toml",
    };
    parse_str(text, format, ConfigSource::File(dir.join(name)))
}

fn ok(r: Result<Config, ConfigError>) -> Config {
    match r {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(r: Result<Config, ConfigError>) -> String {
    match r {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// A node without positions.
fn shape(n: &Node) -> String {
    match &n.value {
        Value::Seq(items) => format!(
            "[{}]",
            items.iter().map(shape).collect::<Vec<_>>().join(",")
        ),
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}:{}", k.name, shape(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        v => format!("{v:?}"),
    }
}

/// Everything in a config except positions and the source.
fn summary(c: &Config) -> String {
    let mut out = format!(
        "graceful={} gt={:?} st={:?} kg={:?} hrt={:?} log={:?} control={:?} watch={:?}\n",
        c.graceful,
        c.graceful_timeout,
        c.shutdown_timeout,
        c.keepalive_grace,
        c.header_read_timeout,
        c.log,
        c.control,
        c.watch
    );
    for s in &c.servers {
        let http: Vec<_> = s.http.iter().map(ListenAddr::key).collect();
        out.push_str(&format!("server {} http={http:?}\n", s.name));
        if let Some(h) = &s.https {
            let a: Vec<_> = h.addresses.iter().map(ListenAddr::key).collect();
            out.push_str(&format!("  https {a:?} {:?} {:?}\n", h.cert, h.key));
        }
        out.push_str(&format!("  admin {:?}\n", s.admin));
        for r in &s.routes {
            let params: Vec<_> = r
                .params
                .entries
                .iter()
                .map(|(k, v)| format!("{k}={}", shape(v)))
                .collect();
            out.push_str(&format!(
                "  route {} -> {} {} {params:?} {:?} {:?}\n",
                r.pattern, r.handler, r.params.key_path, r.params.file, r.params.base_dir
            ));
        }
    }
    out
}

#[test]
fn embedded_default_parses() {
    let c = Config::embedded().unwrap();
    assert_eq!(c.source, ConfigSource::Embedded);
    assert!(c.graceful);
    assert!(c.watch.executable && c.watch.config);
    assert_eq!(c.servers.len(), 1);
    let s = &c.servers[0];
    assert_eq!(s.name, "default");
    assert_eq!(s.http.len(), 1);
    assert_eq!(s.http[0].key(), ":8199");
    assert!(s.https.is_none());
    let admin = s.admin.as_ref().unwrap();
    assert_eq!(admin.path, "/debug/admin");
    assert_eq!(admin.token, None);
    let routes: Vec<_> = s
        .routes
        .iter()
        .map(|r| (r.pattern.as_str(), r.handler.as_str()))
        .collect();
    assert_eq!(
        routes,
        [("/", "hello"), ("/pid", "pid"), ("/sleep", "sleep")]
    );
    let sleep = &s.routes[2].params;
    assert_eq!(
        sleep.duration("duration"),
        Ok(Some(Duration::from_secs(10)))
    );
    assert_eq!(sleep.key_path, "servers.default.routes./sleep");
    assert_eq!(c.listeners().len(), 1);
}

#[test]
fn defaults() {
    let c = ok(yaml("servers: { s: { address: \":80\" } }"));
    assert!(!c.graceful);
    assert_eq!(c.graceful_timeout, Duration::from_secs(10));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(60));
    assert_eq!(c.keepalive_grace, Duration::from_secs(1));
    assert_eq!(c.header_read_timeout, Duration::from_secs(30));
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.send_timeout, Duration::from_secs(60));
    assert_eq!(c.http2_max_concurrent_streams, 128);
    assert_eq!(
        c.log,
        LogConfig {
            format: LogFormat::Text,
            level: "info".into()
        }
    );
    assert_eq!(c.control, ControlConfig { socket: None });
    assert_eq!(
        c.watch,
        WatchConfig {
            executable: false,
            config: false,
            settle: Duration::from_millis(300)
        }
    );
    let s = &c.servers[0];
    assert!(s.admin.is_none() && s.https.is_none() && s.routes.is_empty());

    // watch.* default to graceful, each can be overridden.
    let c = ok(yaml(
        "graceful: true\nwatch: { config: false }\nservers: { s: { address: \":80\" } }",
    ));
    assert_eq!(
        c.watch,
        WatchConfig {
            executable: true,
            config: false,
            settle: Duration::from_millis(300)
        }
    );
}

const FULL_YAML: &str = r#"
graceful: true
graceful_timeout: 5s
shutdown_timeout: 2m
keepalive_grace: 500ms
header_read_timeout: 1m30s
log: { format: json, level: "apphost=debug" }
control: { socket: run/ctl.sock }
watch: { executable: false, settle: 1s }
servers:
  web:
    address: [":8080", "127.0.0.1:9000"]
    https:
      address: "[::1]:8443"
      cert: certs/server.crt
      key: /abs/../abs/server.key
    admin:
      path: /admin
      token_file: ./token.txt
      allowed_exe_dirs: [bin, /opt/app]
    routes:
      "/": hello
      "/sleep": { handler: sleep, duration: 10s, methods: [GET, POST] }
      "/files/*path": { handler: static, root: ./public, list: true, n: 3, f: 1.5 }
  api:
    address: localhost:7000
    admin: true
"#;

const FULL_TOML: &str = r#"
graceful = true
graceful_timeout = "5s"
shutdown_timeout = "2m"
keepalive_grace = "500ms"
header_read_timeout = "1m30s"
log = { format = "json", level = "apphost=debug" }
control.socket = "run/ctl.sock"

[watch]
executable = false
settle = "1s"

[servers.api]
address = "localhost:7000"
admin = true

[servers.web]
address = [":8080", "127.0.0.1:9000"]
https = { address = "[::1]:8443", cert = "certs/server.crt", key = "/abs/../abs/server.key" }

[servers.web.admin]
path = "/admin"
token_file = "./token.txt"
allowed_exe_dirs = ["bin", "/opt/app"]

[servers.web.routes]
"/" = "hello"
"/sleep" = { handler = "sleep", duration = "10s", methods = ["GET", "POST"] }

[servers.web.routes."/files/*path"]
handler = "static"
root = "./public"
list = true
n = 3
f = 1.5
"#;

/// A temp dir holding the files FULL_YAML/FULL_TOML refer to; the key is absolute, so it is
/// written there after substitution.
fn full_setup() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("certs")).unwrap();
    fs::write(dir.path().join("certs/server.crt"), "cert").unwrap();
    fs::write(dir.path().join("server.key"), "key").unwrap();
    fs::write(dir.path().join("token.txt"), "  s3cret\n").unwrap();
    let abs = dir.path().display().to_string();
    let y = FULL_YAML.replace("/abs/../abs", &format!("{abs}/."));
    let t = FULL_TOML.replace("/abs/../abs", &format!("{abs}/."));
    (dir, y, t)
}

#[test]
fn yaml_and_toml_give_the_same_config() {
    let (dir, y, t) = full_setup();
    let cy = ok(in_dir(dir.path(), &y, Format::Yaml));
    let ct = ok(in_dir(dir.path(), &t, Format::Toml));
    let (sy, st) = (summary(&cy), summary(&ct));
    // Params name their file, which differs by extension only.
    assert_eq!(
        sy.replace("server.yaml", "server.X"),
        st.replace("server.toml", "server.X")
    );

    let d = dir.path();
    assert!(cy.graceful);
    assert_eq!(cy.graceful_timeout, Duration::from_secs(5));
    assert_eq!(cy.shutdown_timeout, Duration::from_secs(120));
    assert_eq!(cy.keepalive_grace, Duration::from_millis(500));
    assert_eq!(cy.header_read_timeout, Duration::from_secs(90));
    assert_eq!(cy.log.format, LogFormat::Json);
    assert_eq!(cy.log.level, "apphost=debug");
    assert_eq!(cy.control.socket, Some(d.join("run/ctl.sock")));
    assert!(!cy.watch.executable && cy.watch.config);
    assert_eq!(cy.watch.settle, Duration::from_secs(1));

    // Servers are sorted by name; routes keep file order.
    let names: Vec<_> = cy.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    let api = &cy.servers[0];
    assert_eq!(api.http[0].key(), "127.0.0.1:7000");
    assert_eq!(api.admin.as_ref().unwrap().path, "/debug/admin");
    let web = &cy.servers[1];
    let https = web.https.as_ref().unwrap();
    assert_eq!(https.addresses[0].key(), "[::1]:8443");
    assert_eq!(https.cert, d.join("certs/server.crt"));
    assert_eq!(https.key, d.join("server.key"));
    assert_eq!(https.pos, Pos::new(14, 7));
    let admin = web.admin.as_ref().unwrap();
    assert_eq!(admin.token.as_deref(), Some("s3cret"));
    assert_eq!(
        admin.allowed_exe_dirs,
        [d.join("bin"), PathBuf::from("/opt/app")]
    );
    let patterns: Vec<_> = web.routes.iter().map(|r| r.pattern.as_str()).collect();
    assert_eq!(patterns, ["/", "/sleep", "/files/*path"]);
    assert_eq!(cy.listeners().len(), 4);

    // Positions: the handler's, and the route's.
    let sleep = &web.routes[1];
    assert_eq!(sleep.handler_pos, Pos::new(23, 28));
    assert_eq!(sleep.params.pos, Pos::new(23, 17));
    let files = &ct.servers[1].routes[2];
    assert_eq!(files.handler_pos, Pos::new(32, 11));
    let hello = &ct.servers[1].routes[0];
    assert_eq!(hello.handler_pos, Pos::new(28, 7));
    assert_eq!(hello.params.pos, hello.handler_pos);
    assert_eq!(hello.params.key_path, "servers.web.routes./");
    assert_eq!(hello.params.file, Some(d.join("server.toml")));
}

#[test]
fn type_error_positions_yaml_and_toml() {
    let dir = Path::new("/etc/app");
    let e = err(in_dir(
        dir,
        "servers:\n  s1:\n    address: \":80\"\n\ngraceful: \"yes\"\n",
        Format::Yaml,
    ));
    assert_eq!(
        e,
        "/etc/app/server.yaml:5:11: graceful: expected a boolean, found a string \"yes\""
    );
    let e = err(in_dir(
        dir,
        "[servers.s1]\naddress = \":80\"\n[servers.s1.routes]\n\"/sleep\" = { handler = \"sleep\" }\n[servers.s1.https]\naddress = 443\n",
        Format::Toml,
    ));
    assert_eq!(
        e,
        "/etc/app/server.toml:6:11: servers.s1.https.address: expected an address or a list of addresses, found an integer 443"
    );
    let e = err(yaml("servers:\n  s1:\n    address: [\":80\", 8080]\n"));
    assert_eq!(
        e,
        "<embedded default>:3:22: servers.s1.address[1]: expected a string, found an integer 8080"
    );
}

#[test]
fn duration_errors() {
    let base = "servers: { s: { address: \":80\" } }\n";
    assert_eq!(
        err(yaml(&format!("{base}graceful_timeout: 10\n"))),
        "<embedded default>:2:19: graceful_timeout: invalid duration \"10\" (expected a number and a unit: ms, s, m, h; e.g. 500ms, 10s, 2m)"
    );
    assert_eq!(
        err(yaml(&format!("{base}watch:\n  settle: abc\n"))),
        "<embedded default>:3:11: watch.settle: invalid duration \"abc\" (expected a number and a unit: ms, s, m, h; e.g. 500ms, 10s, 2m)"
    );
    assert_eq!(
        err(yaml(&format!("{base}shutdown_timeout: [1s]\n"))),
        "<embedded default>:2:19: shutdown_timeout: expected a duration such as 10s, found a list"
    );
}

#[test]
fn send_timeout_and_stream_cap() {
    let c = ok(yaml(
        "send_timeout: 5s\nhttp2_max_concurrent_streams: 16\nservers: { s: { address: \":80\" } }\n",
    ));
    assert_eq!(c.send_timeout, Duration::from_secs(5));
    assert_eq!(c.http2_max_concurrent_streams, 16);
    let c = ok(toml(
        "send_timeout = \"1m\"\nhttp2_max_concurrent_streams = 1\n[servers.s]\naddress = \":80\"\n",
    ));
    assert_eq!(c.send_timeout, Duration::from_secs(60));
    assert_eq!(c.http2_max_concurrent_streams, 1);
    assert_eq!(
        err(yaml(
            "servers: { s: { address: \":80\" } }\nhttp2_max_concurrent_streams: 0\n"
        )),
        "<embedded default>:2:31: http2_max_concurrent_streams: expected a positive integer, found an integer 0"
    );
    assert_eq!(
        err(yaml(
            "send_timout: 5s\nservers: { s: { address: \":80\" } }\n"
        )),
        "<embedded default>:1:1: send_timout: unknown key \"send_timout\" (did you mean \"send_timeout\"?)"
    );
    assert!(
        err(yaml(
            "send_timeout: soon\nservers: { s: { address: \":80\" } }\n"
        ))
        .starts_with("<embedded default>:1:15: send_timeout: invalid duration \"soon\""),
    );
}

#[test]
fn stream_grace_is_optional_and_shorter_than_shutdown_timeout() {
    let srv = "servers: { s: { address: \":80\" } }\n";
    assert_eq!(ok(yaml(srv)).stream_grace, None);
    let c = ok(yaml(&format!("stream_grace: 5s\n{srv}")));
    assert_eq!(c.stream_grace, Some(Duration::from_secs(5)));
    let c = ok(toml(
        "stream_grace = \"500ms\"\nshutdown_timeout = \"1s\"\n[servers.s]\naddress = \":80\"\n",
    ));
    assert_eq!(c.stream_grace, Some(Duration::from_millis(500)));
    assert_eq!(
        err(yaml(&format!(
            "shutdown_timeout: 10s\nstream_grace: 10s\n{srv}"
        ))),
        "<embedded default>:2:15: stream_grace: must be shorter than shutdown_timeout (10s), or \
         the drain ends before the host closes the streams left open"
    );
    // Against the default shutdown_timeout (60s) too.
    assert!(err(yaml(&format!("stream_grace: 2m\n{srv}"))).starts_with(
        "<embedded default>:1:15: stream_grace: must be shorter than shutdown_timeout (1m)"
    ));
}

#[test]
fn unknown_keys() {
    assert_eq!(
        err(yaml(
            "gracefull: true\nservers: { s: { address: \":80\" } }\n"
        )),
        "<embedded default>:1:1: gracefull: unknown key \"gracefull\" (did you mean \"graceful\"?)"
    );
    assert_eq!(
        err(yaml("servers:\n  s:\n    adress: \":80\"\n")),
        "<embedded default>:3:5: servers.s.adress: unknown key \"adress\" (did you mean \"address\"?)"
    );
    assert_eq!(
        err(toml("[log]\nformat = \"json\"\nfoo = 1\n")),
        "<embedded default>:3:1: log.foo: unknown key \"foo\" (valid keys: format, level)"
    );
    assert_eq!(
        err(yaml(
            "servers:\n  s:\n    address: \":80\"\n    admin: { tokne_file: x }\n"
        )),
        "<embedded default>:4:14: servers.s.admin.tokne_file: unknown key \"tokne_file\" (did you mean \"token_file\"?)"
    );
}

#[test]
fn duplicate_yaml_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    fs::write(
        &path,
        "servers:\n  s:\n    address: \":80\"\n    routes:\n      /a: hello\n      /a: pid\n",
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.file(), Some(path.as_path()));
    assert_eq!(e.pos(), Some(Pos::new(6, 7)));
    assert_eq!(e.message(), "duplicate key \"/a\"");
}

#[test]
fn conflicting_listeners() {
    assert_eq!(
        err(yaml(
            "servers:\n  a: { address: \":80\" }\n  b: { address: \":80\" }\n"
        )),
        "<embedded default>:3:17: servers.b.address: listen address \":80\" is already used at servers.a.address"
    );
    assert_eq!(
        err(yaml(
            "servers:\n  a:\n    address: [\"127.0.0.1:80\", \"localhost:80\"]\n"
        )),
        "<embedded default>:3:31: servers.a.address[1]: listen address \"127.0.0.1:80\" is already used at servers.a.address[0]"
    );
    assert_eq!(
        err(yaml(
            "servers:\n  a: { address: \"127.0.0.1:80\" }\n  b: { address: \":80\" }\n"
        )),
        "<embedded default>:3:17: servers.b.address: listen address \":80\" conflicts with \"127.0.0.1:80\" at servers.a.address (same port)"
    );
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("c.pem"), "x").unwrap();
    let e = err(in_dir(
        dir.path(),
        "servers:\n  a:\n    address: \"0.0.0.0:443\"\n    https: { address: \":443\", cert: c.pem, key: c.pem }\n",
        Format::Yaml,
    ));
    assert!(
        e.ends_with(":4:23: servers.a.https.address: listen address \":443\" conflicts with \"0.0.0.0:443\" at servers.a.address (same port)"),
        "{e}"
    );
    // Different IPs, different ports, and port 0 are fine.
    let c = ok(yaml(
        "servers:\n  a: { address: [\"127.0.0.1:80\", \"127.0.0.2:80\", \":0\"] }\n  b: { address: [\":81\", \":0\"] }\n",
    ));
    assert_eq!(c.listeners().len(), 5);
}

#[test]
fn servers_and_addresses() {
    assert_eq!(
        err(yaml("graceful: true\n")),
        "<embedded default>: missing key \"servers\" (a map of server names to servers)"
    );
    assert_eq!(
        err(yaml("")),
        "<embedded default>: the config is empty (it needs at least a \"servers\" map)"
    );
    assert_eq!(
        err(yaml("- a\n")),
        "<embedded default>:1:1: expected a map, found a list"
    );
    assert_eq!(
        err(yaml("servers: {}\n")),
        "<embedded default>:1:10: servers: there must be at least one server"
    );
    assert_eq!(
        err(yaml("servers:\n  s:\n    routes: { /: hello }\n")),
        "<embedded default>:3:5: servers.s: a server needs at least one address (\"address\" or \"https\")"
    );
    assert_eq!(
        err(yaml("servers:\n  s: { address: [] }\n")),
        "<embedded default>:2:17: servers.s.address: expected at least one address"
    );
    let e = err(yaml("servers:\n  s: { address: \"example.com:80\" }\n"));
    assert!(
        e.starts_with("<embedded default>:2:17: servers.s.address: invalid listen address \"example.com:80\": the host must be an IP address or localhost"),
        "{e}"
    );
    assert_eq!(
        err(yaml(
            "servers:\n  s: { address: \":80\", https: { address: \":443\" } }\n"
        )),
        "<embedded default>:2:31: servers.s.https: missing key \"cert\""
    );
}

#[test]
fn missing_cert_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = "servers:\n  s:\n    https:\n      address: \":443\"\n      cert: server.crt\n      key: server.key\n";
    let e = in_dir(d, text, Format::Yaml).unwrap_err();
    let crt = d.join("server.crt");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:5:13: servers.s.https.cert: cannot read \"{}\": No such file or directory",
            d.join("server.yaml").display(),
            crt.display()
        )
    );
    fs::write(&crt, "x").unwrap();
    let e = in_dir(d, text, Format::Yaml).unwrap_err();
    assert_eq!(e.key_path(), "servers.s.https.key");
    assert_eq!(e.pos(), Some(Pos::new(6, 12)));
    fs::create_dir(d.join("server.key")).unwrap();
    let e = in_dir(d, text, Format::Yaml).unwrap_err();
    assert!(e.message().ends_with("it is a directory"), "{e}");
}

#[test]
fn admin_forms() {
    let admin = |v: &str| {
        yaml(&format!(
            "servers:\n  s:\n    address: \":80\"\n    admin: {v}\n"
        ))
        .map(|c| c.servers[0].admin.clone())
    };
    assert_eq!(admin("true").unwrap().unwrap().path, "/debug/admin");
    assert_eq!(admin("{}").unwrap().unwrap().path, "/debug/admin");
    assert!(admin("false").unwrap().is_none());
    let a = admin("{ path: /, token: abc }").unwrap().unwrap();
    assert_eq!((a.path.as_str(), a.token.as_deref()), ("/", Some("abc")));
    assert_eq!(
        admin("yes").unwrap_err().to_string(),
        "<embedded default>:4:12: servers.s.admin: expected a map or a boolean, found a string \"yes\""
    );
    assert_eq!(
        admin("{ path: admin }").unwrap_err().message(),
        "\"admin\" must start with /"
    );
    assert_eq!(
        admin("{ path: /admin/ }").unwrap_err().message(),
        "\"/admin/\" must not end with /"
    );
    let e = admin("{ token: a, token_file: t }").unwrap_err();
    assert_eq!(e.key_path(), "servers.s.admin.token_file");
    assert_eq!(
        e.message(),
        "token and token_file are mutually exclusive (use one)"
    );
    assert_eq!(
        admin("{ token: \"\" }").unwrap_err().message(),
        "must not be empty"
    );

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = "servers:\n  s:\n    address: \":80\"\n    admin: { token_file: tok }\n";
    let e = in_dir(d, text, Format::Yaml).unwrap_err();
    assert_eq!(
        e.message(),
        format!(
            "cannot read \"{}\": No such file or directory",
            d.join("tok").display()
        )
    );
    fs::write(d.join("tok"), " \n").unwrap();
    let e = in_dir(d, text, Format::Yaml).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:4:26: servers.s.admin.token_file: \"{}\" is empty",
            d.join("server.yaml").display(),
            d.join("tok").display()
        )
    );
}

#[test]
fn route_patterns_and_values() {
    let routes = |v: &str| {
        yaml(&format!(
            "servers:\n  s:\n    address: \":80\"\n    routes:\n      {v}\n"
        ))
        .map(|c| c.servers[0].routes.clone())
    };
    assert_eq!(
        routes("/*rest: hello").unwrap()[0].pattern.as_str(),
        "/*rest"
    );
    assert_eq!(
        routes("/a/b/*p: hello").unwrap()[0].pattern.as_str(),
        "/a/b/*p"
    );
    for bad in [
        "a: hello",
        "/a/*: hello",
        "/a*/b: hello",
        "/*a/b: hello",
        "/a/*b*: hello",
    ] {
        let e = routes(bad).unwrap_err();
        assert_eq!(e.pos(), Some(Pos::new(5, 7)), "{bad}: {e}");
    }
    assert_eq!(
        routes("/a: hello").unwrap()[0].params.entries.len(),
        0,
        "a plain string has no params"
    );
    assert_eq!(
        routes("/a: { duration: 1s }").unwrap_err().to_string(),
        "<embedded default>:5:11: servers.s.routes./a: missing key \"handler\""
    );
    assert_eq!(
        routes("/a: { handler: 5 }").unwrap_err().to_string(),
        "<embedded default>:5:22: servers.s.routes./a.handler: expected a string, found an integer 5"
    );
    assert_eq!(
        routes("/a: [hello]").unwrap_err().to_string(),
        "<embedded default>:5:11: servers.s.routes./a: expected a handler name or a map with a \"handler\" key, found a list"
    );
}

#[test]
fn route_params_access() {
    let dir = Path::new("/srv/app");
    let text = "servers:\n  s1:\n    address: \":80\"\n    routes:\n      /x: { handler: h, duration: abc, root: ./www, on: true, n: 5, m: [GET, PUT], s: 7, durr: 1s }\n";
    let c = ok(in_dir(dir, text, Format::Yaml));
    let r = &c.servers[0].routes[0];
    assert_eq!(r.handler, "h");
    assert_eq!(r.handler_pos, Pos::new(5, 22));
    assert_eq!(
        format!("{}.handler", r.params.key_path),
        "servers.s1.routes./x.handler"
    );
    let p = &r.params;
    assert_eq!(p.file.as_deref(), Some(Path::new("/srv/app/server.yaml")));
    assert_eq!(
        p.keys().collect::<Vec<_>>(),
        ["duration", "root", "on", "n", "m", "s", "durr"]
    );
    assert_eq!(
        p.duration("duration").unwrap_err().to_string(),
        "/srv/app/server.yaml:5:35: servers.s1.routes./x.duration: invalid duration \"abc\" (expected a number and a unit: ms, s, m, h; e.g. 500ms, 10s, 2m)"
    );
    assert_eq!(p.duration("durr"), Ok(Some(Duration::from_secs(1))));
    assert_eq!(p.duration("missing"), Ok(None));
    assert_eq!(p.path("root"), Ok(Some(PathBuf::from("/srv/app/www"))));
    assert_eq!(p.bool("on"), Ok(Some(true)));
    assert_eq!(p.u64("n"), Ok(Some(5)));
    assert_eq!(p.str("root"), Ok(Some("./www")));
    assert_eq!(
        p.str_list("m"),
        Ok(Some(vec!["GET".to_string(), "PUT".to_string()]))
    );
    assert_eq!(
        p.str("s").unwrap_err().to_string(),
        "/srv/app/server.yaml:5:87: servers.s1.routes./x.s: expected a string, found an integer 7"
    );
    assert_eq!(
        p.bool("n").unwrap_err().message(),
        "expected a boolean, found an integer 5"
    );
    assert_eq!(
        p.error(Some("root"), "no such directory").to_string(),
        "/srv/app/server.yaml:5:46: servers.s1.routes./x.root: no such directory"
    );
    assert_eq!(
        p.error(None, "bad route").to_string(),
        "/srv/app/server.yaml:5:11: servers.s1.routes./x: bad route"
    );
    assert_eq!(
        p.deny_unknown(&["duration", "root", "on", "n", "m", "s", "durr"]),
        Ok(())
    );
    assert_eq!(
        p.deny_unknown(&["duration", "root", "on", "n", "m", "s", "dur"])
            .unwrap_err()
            .to_string(),
        "/srv/app/server.yaml:5:96: servers.s1.routes./x.durr: unknown key \"durr\" (did you mean \"dur\"?)"
    );
    assert_eq!(
        p.deny_unknown(&[]).unwrap_err().message(),
        "unknown key \"duration\" (valid keys: methods, strip_prefix, timeout, max_request_body)"
    );
}

#[test]
fn params_helpers_for_tests() {
    let p = Params::empty();
    assert!(p.entries.is_empty());
    assert_eq!(p.str("x"), Ok(None));
    assert_eq!(p.deny_unknown(&[]), Ok(()));
    let p = Params::parse("root = \"www\"\nmethods = [\"GET\"]\n", Format::Toml).unwrap();
    assert_eq!(p.path("root"), Ok(Some(PathBuf::from("www"))));
    assert_eq!(p.deny_unknown(&["root"]), Ok(()));
    assert_eq!(
        p.deny_unknown(&[]).unwrap_err().to_string(),
        "<embedded default>:1:8: params.root: unknown key \"root\" (valid keys: methods, strip_prefix, timeout, max_request_body)"
    );
    assert!(Params::parse("[1]", Format::Yaml).is_err());
}

#[test]
fn load_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("sub")).unwrap();
    let yaml_path = d.join("sub/app.yml");
    fs::write(
        &yaml_path,
        "control: { socket: ctl.sock }\nservers: { s: { address: \":80\" } }\n",
    )
    .unwrap();
    // The path is kept as given (not resolved); relative paths resolve against its directory.
    let given = d.join("sub/../sub/app.yml");
    let c = Config::load(&given).unwrap();
    assert_eq!(c.source, ConfigSource::File(given.clone()));
    assert_eq!(
        c.control.socket,
        Some(given.parent().unwrap().join("ctl.sock"))
    );
    // A symlinked config stays the link, so a switched link is followed at the next load.
    let link = d.join("linked.yml");
    std::os::unix::fs::symlink(&yaml_path, &link).unwrap();
    assert_eq!(
        Config::load(&link).unwrap().source,
        ConfigSource::File(link.clone())
    );

    let toml_path = d.join("server.TOML");
    fs::write(&toml_path, "[servers.s]\naddress = \":80\"\n").unwrap();
    assert_eq!(Config::load(&toml_path).unwrap().servers[0].name, "s");

    let e = Config::load(&d.join("server.json")).unwrap_err();
    assert_eq!(
        e.message(),
        "unsupported config extension \".json\" (expected .yaml, .yml or .toml)"
    );
    let e = Config::load(&d.join("missing.yaml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: cannot read the config file: No such file or directory",
            d.join("missing.yaml").display()
        )
    );
    // Errors name the file as given.
    let bad = d.join("sub/./bad.yaml");
    fs::write(&bad, "servers: 1\n").unwrap();
    assert_eq!(
        Config::load(&bad).unwrap_err().to_string(),
        format!(
            "{}:1:10: servers: expected a map of server names to servers, found an integer 1",
            bad.display()
        )
    );
    let bad = d.join("bad.toml");
    fs::write(&bad, "servers = [\n").unwrap();
    let e = Config::load(&bad).unwrap_err();
    assert_eq!(e.file(), Some(bad.as_path()));
    assert!(e.message().starts_with("invalid TOML: "), "{e}");
}

#[test]
fn log_values() {
    let base = "servers: { s: { address: \":80\" } }\n";
    assert_eq!(
        err(yaml(&format!("{base}log: {{ format: xml }}\n"))),
        "<embedded default>:2:16: log.format: unknown log format \"xml\" (expected text or json)"
    );
    assert_eq!(
        ok(yaml(&format!("{base}log: {{ level: warn }}\n")))
            .log
            .level,
        "warn"
    );
    for good in ["info,apphost=debug", "apphost=trace", "OFF", "error"] {
        ok(yaml(&format!("{base}log: {{ level: \"{good}\" }}\n")));
    }
    // tracing would take a bare unknown word for a target name and print nothing at all.
    assert_eq!(
        err(yaml(&format!("{base}log: {{ level: verbose }}\n"))),
        "<embedded default>:2:15: log.level: unknown log level \"verbose\" (expected one of \
         trace, debug, info, warn, error, off, or TARGET=LEVEL directives such as \
         info,apphost=debug)"
    );
    assert_eq!(
        err(yaml(&format!("{base}log: {{ level: \"apphost=inof\" }}\n"))),
        "<embedded default>:2:15: log.level: unknown log level \"inof\" for \"apphost\" (did \
         you mean \"info\"?)"
    );
}

#[test]
fn a_directory_is_not_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = Config::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.ends_with(": is a directory (expected a config file: -c DIR/server.yaml)"),
        "{e}"
    );
}

#[test]
fn locate_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(locate_in(d, None), Ok(None));
    assert_eq!(locate_in(d, Some(OsStr::new(""))), Ok(None));

    fs::create_dir(d.join("config")).unwrap();
    fs::write(d.join("config/server.toml"), "").unwrap();
    assert_eq!(locate_in(d, None), Ok(Some(d.join("config/server.toml"))));
    fs::write(d.join("config/server.yaml"), "").unwrap();
    assert_eq!(locate_in(d, None), Ok(Some(d.join("config/server.yaml"))));
    fs::write(d.join("server.toml"), "").unwrap();
    assert_eq!(locate_in(d, None), Ok(Some(d.join("server.toml"))));
    fs::write(d.join("server.yaml"), "").unwrap();
    assert_eq!(locate_in(d, None), Ok(Some(d.join("server.yaml"))));

    // $APPHOST_CONFIG wins, relative to the directory or absolute; it must exist.
    fs::write(d.join("other.toml"), "").unwrap();
    assert_eq!(
        locate_in(d, Some(OsStr::new("other.toml"))),
        Ok(Some(d.join("other.toml")))
    );
    let abs = d.join("other.toml");
    assert_eq!(locate_in(d, Some(abs.as_os_str())), Ok(Some(abs.clone())));
    let e = locate_in(d, Some(OsStr::new("nope.yaml"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the file named by $APPHOST_CONFIG does not exist",
            d.join("nope.yaml").display()
        )
    );
}

#[test]
fn format_from_path() {
    assert_eq!(Format::from_path(Path::new("a.yaml")), Some(Format::Yaml));
    assert_eq!(Format::from_path(Path::new("a.YML")), Some(Format::Yaml));
    assert_eq!(Format::from_path(Path::new("a.toml")), Some(Format::Toml));
    assert_eq!(Format::from_path(Path::new("a.json")), None);
    assert_eq!(Format::from_path(Path::new("yaml")), None);
}

#[test]
fn admin_paths_must_not_shadow_routes() {
    let with = |admin: &str, route: &str| {
        yaml(&format!(
            "servers:\n  s:\n    address: \":80\"\n    admin: {{ path: {admin} }}\n    routes:\n      \"{route}\": hello\n"
        ))
    };
    assert_eq!(
        err(with("/health", "/health")),
        "<embedded default>:6:18: servers.s.routes./health: the admin routes at \"/health\" \
         would answer every request for this route; move one of them (admin: { path: \
         /another/path })"
    );
    err(with("/ops", "/ops/status"));
    err(with("/ops", "/ops/*rest"));
    // Beside or around the admin routes is fine: the longer match wins only below them.
    ok(with("/ops", "/opsx"));
    ok(with("/ops", "/*rest"));
    ok(with("/api/admin", "/api/*rest"));
}
