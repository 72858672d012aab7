//! The `goodput` binary: a thin command line over the goodput crates.
fn main() {}
