//! A first end-to-end check: start, serve, restart by signal, shut down.

use std::time::Duration;

use crate::support::*;

#[test]
fn serves_restarts_on_sigusr1_and_stops_on_sigterm() {
    let port = free_port();
    let mut host = Apphost::start(&format!(
        "graceful: true\nshutdown_timeout: 5s\nservers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/\": hello\n      \"/pid\": pid\n"
    ));
    let first = host.wait_serving(port);
    assert_ne!(first, host.pid(), "the worker is not the supervisor");
    assert_eq!(get(port, "/").body_str(), "哈喽！\n");
    host.signal(rustix::process::Signal::USR1);
    let second = wait_until(Duration::from_secs(10), "a new worker pid", || {
        let p: u32 = get(port, "/pid").body_str().trim().parse().ok()?;
        (p != first).then_some(p)
    });
    assert_ne!(second, host.pid());
    host.signal(rustix::process::Signal::TERM);
    let st = host.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit status {st:?}; log:\n{}", host.log());
    host.wait_log("all servers shutdown");
}
