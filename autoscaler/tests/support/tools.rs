//! Locating the real tools `scripts/tools.sh` installs (`GOODPUT_TOOLS`, default
//! `<repo>/.tools/venv/bin`). A missing tool fails the test with a message naming the script.

use std::path::PathBuf;

/// Path of tool `name`; panics (fails the test) when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let dir = std::env::var("GOODPUT_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".tools/venv/bin")
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/tools.sh` (or set GOODPUT_TOOLS)",
        path.display()
    );
    path
}
