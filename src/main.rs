//! The `strangler` binary: parses the command line and hands over to the library.

// mimalloc: per-thread free lists suit a proxy's many small, short-lived allocations better
// than glibc's malloc (measured with the peer benchmark).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    strangler::main()
}
