//! Seed example 2 as a program: the built-in handlers over HTTPS on :8200, with `https.yaml` as
//! the default config (it names `server.crt` and `server.key` in the current directory; see the
//! comment at the top of `https.yaml` for making them).
//!
//! ```sh
//! cargo run --release --example https -- run
//! curl -k https://127.0.0.1:8200/pid
//! ```

fn main() -> std::process::ExitCode {
    apphost::Host::with_builtins()
        .default_config(include_str!("https.yaml"))
        .main()
}
