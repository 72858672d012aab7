#!/usr/bin/env python3
"""Writes (or, with --check, compares) docs/reference/cli.md from the goodput binary's own
`--help` output, every subcommand recursively, so the reference is what the binary says.

  python3 scripts/deploy/cli_reference.py [--check] [GOODPUT_BIN]
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "reference" / "cli.md"


def help_of(binary, path):
    r = subprocess.run([binary, *path, "--help"], capture_output=True, text=True,
                       env=dict(os.environ, NO_COLOR="1", COLUMNS="100"))
    if r.returncode != 0:
        sys.exit(f"cli-reference: `goodput {' '.join(path)} --help` failed: {r.stderr}")
    # clap shows the env values set in this shell ([env: X=value]); the reference shows none.
    return re.sub(r"\[env: ([A-Z0-9_]+)=[^\]]*\]", r"[env: \1=]", r.stdout.rstrip())


def subcommands(text):
    m = re.search(r"^Commands:\n((?:  .*\n?)+)", text + "\n", re.M)
    if not m:
        return []
    return [line.split()[0] for line in m.group(1).splitlines()
            if line.startswith("  ") and not line.startswith("   ") and line.split()[0] != "help"]


def render(binary):
    parts = ["# Command-line reference\n",
             "Generated from the binary's own `--help` by `python3 scripts/deploy/cli_reference.py`",
             "(scripts/check-deploy.sh fails when this page and the binary disagree). Every flag can",
             "also be set through the environment variable shown as `[env: NAME=]`.\n"]

    def walk(path):
        text = help_of(binary, path)
        parts.append(f"{'#' * min(len(path) + 2, 4)} `goodput{' ' if path else ''}{' '.join(path)}`\n")
        parts.append("```text\n" + text + "\n```\n")
        for sub in subcommands(text):
            walk(path + [sub])

    walk([])
    return "\n".join(parts)


def main():
    args = [a for a in sys.argv[1:] if a != "--check"]
    check = "--check" in sys.argv
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = args[0] if args else os.environ.get("GOODPUT_BIN", str(target / "debug" / "goodput"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"cli-reference: no goodput binary at {binary} (set GOODPUT_BIN)")
    text = render(binary)
    if check:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit("cli-reference: docs/reference/cli.md differs from the binary's --help: run "
                     "python3 scripts/deploy/cli_reference.py")
        print("cli-reference: docs/reference/cli.md matches the binary")
    else:
        OUT.write_text(text)
        print(f"cli-reference: wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
