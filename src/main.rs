//! The `apphost` binary: the default host with the built-in handlers.
//!
//! With the `mimalloc` feature (on by default) the binary allocates through mimalloc (BENCHMARKS
//! (ae)); the library itself never chooses an allocator.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    apphost::Host::with_builtins().main()
}
