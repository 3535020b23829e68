//! Seed example 2 as a program: the built-in handlers over HTTPS on :8443, with `https.yaml` as
//! the default config. An embedded config has no file, so its `server.crt` and `server.key` are
//! looked for in the current directory: run it from `examples/`, where the command at the top of
//! `https.yaml` makes them, or give `-c examples/https.yaml`.
//!
//! ```sh
//! cargo run --release --example https -- run
//! curl -k https://127.0.0.1:8443/pid
//! ```

fn main() -> std::process::ExitCode {
    apphost::Host::with_builtins()
        .default_config(include_str!("https.yaml"))
        .main()
}
