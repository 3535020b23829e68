//! The `apphost` binary: the default host with the built-in handlers.

fn main() -> std::process::ExitCode {
    apphost::Host::with_builtins().main()
}
