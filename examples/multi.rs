//! Seed example 3 as a program: two servers on four ports (8100, 8200 and 8300, 8400); one
//! restart moves them all to the new worker.
//!
//! ```sh
//! cargo run --release --example multi -- run
//! for p in 8100 8200 8300 8400; do curl localhost:$p/pid; done
//! ```

fn main() -> std::process::ExitCode {
    apphost::Host::with_builtins()
        .default_config(include_str!("multi.yaml"))
        .main()
}
