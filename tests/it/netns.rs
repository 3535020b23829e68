//! The admin routes' loopback rule on the real binary, seen from a client that is not on
//! loopback. A client beyond loopback needs an address of its own; these tests make one without
//! touching the machine's network: `unshare --net` starts apphost in a new, private network
//! namespace whose only interface is its own `lo`, holding 127.0.0.1 and 192.0.2.1 (TEST-NET-1,
//! reachable from nowhere). apphost listens on 127.0.0.1 only. The test's client thread joins that
//! namespace (`setns`) and connects to 127.0.0.1, once from 127.0.0.1 and once with its source
//! bound to 192.0.2.1: the same listener, the same route, two peers. A third server takes the
//! PROXY protocol: a header claiming 127.0.0.1 from 192.0.2.1 is still refused the admin.
//!
//! Needs root (or CAP_SYS_ADMIN) and iproute2's `ip`; outside CI a machine without them skips
//! with a message, in CI (`CI=true`) that is a failure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::support::*;

const T: Duration = Duration::from_secs(20);
/// In the private namespace every port is free.
const OPEN: u16 = 8080;
const TOKEN: u16 = 8081;
const PROXIED: u16 = 8082;

fn config() -> String {
    format!(
        "graceful: true\n\
         watch: {{ executable: false, config: false }}\n\
         servers:\n  \
           open:\n    \
             address: \"127.0.0.1:{OPEN}\"\n    \
             admin: {{}}\n    \
             routes:\n      \
               \"/pid\": pid\n  \
           token:\n    \
             address: \"127.0.0.1:{TOKEN}\"\n    \
             admin: {{ token: s3cret-token }}\n    \
             routes:\n      \
               \"/pid\": pid\n  \
           proxied:\n    \
             address: \"127.0.0.1:{PROXIED}\"\n    \
             proxy_protocol: true\n    \
             admin: {{}}\n"
    )
}

/// Whether this machine can make a private network namespace (`unshare --net` and `ip`).
fn namespaces_usable() -> bool {
    let ok = Command::new("unshare")
        .args(["--net", "ip", "link", "set", "lo", "up"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !in_ci,
            "`unshare --net ip link set lo up` failed: CI needs root and iproute2"
        );
        eprintln!("skipped: cannot make a network namespace (needs root, unshare and ip)");
    }
    ok
}

/// One `GET path` over HTTP/1.1 to 127.0.0.1:`port`, from `source` (port 0), with `headers`.
/// Returns the status code.
fn get_from(source: Ipv4Addr, port: u16, path: &str, headers: &[(&str, &str)]) -> Resp {
    get_after(source, port, b"", path, headers)
}

/// As [`get_from`], with `preamble` (a PROXY header) sent first.
fn get_after(
    source: Ipv4Addr,
    port: u16,
    preamble: &[u8],
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((source, 0)).into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {to} from {source}: {e}"));
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(preamble).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw, false).unwrap()
}

#[test]
fn admin_refuses_a_client_beyond_loopback_and_a_token_admits_it() {
    if !namespaces_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, config()).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    // unshare execs sh, which execs apphost: the child's pid is the supervisor's.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "sh",
        "-c",
        "ip link set lo up && ip addr add 192.0.2.1/32 dev lo && exec \"$0\" run -c \"$1\"",
        BIN,
    ])
    .arg(&path)
    .env("XDG_RUNTIME_DIR", &run)
    .current_dir(dir.path());
    let mut host = Apphost::spawn(cmd, dir, path);
    let pid = host.pid();
    // `unshare` makes the namespace before it execs: until then the child shares ours.
    let ns_path = format!("/proc/{pid}/ns/net");
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    wait_until(T, "the child's own network namespace", || {
        let theirs = std::fs::read_link(&ns_path).ok()?;
        (theirs != ours).then_some(())
    });

    // The client joins the host's namespace on a thread of its own (setns moves one thread).
    let verdicts = std::thread::spawn(move || {
        let ns = std::fs::File::open(&ns_path).unwrap();
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the host's network namespace");
        let lo = Ipv4Addr::LOCALHOST;
        let beyond = Ipv4Addr::new(192, 0, 2, 1);
        wait_until(T, "the worker serves in its namespace", || {
            TcpStream::connect(("127.0.0.1", OPEN)).ok()?;
            let r = get_from(lo, OPEN, "/pid", &[]);
            (r.status == 200).then_some(())
        });
        let bearer = [("authorization", "Bearer s3cret-token")];
        let claim_loopback = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 8082\r\n";
        [
            // The ordinary route answers anyone.
            (
                "route, beyond loopback",
                get_from(beyond, OPEN, "/pid", &[]),
            ),
            // No token: loopback only.
            (
                "admin, loopback",
                get_from(lo, OPEN, "/debug/admin/status", &[]),
            ),
            (
                "admin, beyond loopback",
                get_from(beyond, OPEN, "/debug/admin/status", &[]),
            ),
            // A token admits any client that has it, and only those.
            (
                "token admin, beyond, no token",
                get_from(beyond, TOKEN, "/debug/admin/status", &[]),
            ),
            (
                "token admin, beyond, token",
                get_from(beyond, TOKEN, "/debug/admin/status", &bearer),
            ),
            // A PROXY header claiming loopback does not make a client beyond it loopback: the
            // check uses the address the connection came from.
            (
                "proxied admin, beyond, header claiming loopback",
                get_after(beyond, PROXIED, claim_loopback, "/debug/admin/status", &[]),
            ),
        ]
        .map(|(what, r)| (what, r.status, r.body_str()))
    })
    .join()
    .unwrap_or_else(|_| panic!("client thread failed; log:\n{}", host.log()));

    let want = [200, 200, 403, 401, 200, 403];
    for ((what, status, body), want) in verdicts.iter().zip(want) {
        assert_eq!(*status, want, "{what}: {body}\nlog:\n{}", host.log());
    }
    let refused = &verdicts[2].2;
    assert!(
        refused.contains("loopback") && refused.contains("192.0.2.1"),
        "the 403 says why and names the client: {refused}"
    );
    host.wait_log("client=192.0.2.1:");
    assert!(
        verdicts[5].2.contains("192.0.2.1"),
        "the proxied 403 names the real peer: {}",
        verdicts[5].2
    );
    host.wait_log("client=127.0.0.1:40000 (via 192.0.2.1:");
    host.signal(rustix::process::Signal::TERM);
    assert!(host.wait_exit(T).success(), "log:\n{}", host.log());
}
