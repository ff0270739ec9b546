#!/usr/bin/env python3
"""Runs the README's examples as written and checks what they print.

    python3 tests/readme/run.py BERTQA_BINARY [--python PYTHON [--python-only]]

Every ```console block is run command by command (`$ ` lines, with their `\\` continuations) in a
scratch folder laid out like a fresh clone (`examples/` of this repository, `../shared` beside it),
with `bertqa` on PATH meaning BERTQA_BINARY; the lines it shows as output must be printed as
shown, except figures of time and speed. A command ending in `&` (the server) runs in the
background until the block ends, and the next command waits for it to answer `/health`.
Every ```sh block whose commands start with `cargo run` is run the same way with `bertqa` in
place of `cargo run [--release] --` (exit status 0 required). With `--python`, every
```python block is run as a script by that interpreter (which must import bertqa) and the
`# ` comment lines after a statement that prints must match what it printed, to the shown
precision (`...` stands for the rest of a number or a list).

Exit status 0 when every example ran as shown; the last line says how many ran.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]
# Figures that change from run to run: durations, rates and sizes read per second.
VOLATILE = re.compile(r"\d+(\.\d+)? s\b|questions/s|MB/s|\d+(\.\d+)?\s*ms\b")


def blocks(readme: str):
    """(language, first line number, lines) of every fenced block."""
    lines = readme.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)", lines[i])
        if not m:
            i += 1
            continue
        lang, start, body = m.group(1), i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        yield lang, start + 1, body


def console_steps(body: list[str]):
    """(command, expected output lines) of a console block."""
    steps: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(body):
        line = body[i]
        if not line.startswith("$ "):
            i += 1
            continue
        command = line[2:]
        while command.endswith("\\") and i + 1 < len(body):
            i += 1
            command += "\n" + body[i]
        i += 1
        expected = []
        # A quoted argument may run over several lines (the curl body).
        while command.count("'") % 2 == 1 and i < len(body):
            command += "\n" + body[i]
            i += 1
        while i < len(body) and not body[i].startswith("$ "):
            expected.append(body[i])
            i += 1
        steps.append((command, expected))
    return steps


def comparable(lines: list[str]) -> list[str]:
    return [l.rstrip() for l in lines if l.strip() and not VOLATILE.search(l)]


def wait_for_health(url: str, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


class Runner:
    def __init__(self, binary: pathlib.Path, python: str | None):
        self.scratch = pathlib.Path(tempfile.mkdtemp(prefix="bertqa-readme-"))
        self.work = self.scratch / "clone"
        self.work.mkdir()
        shared = pathlib.Path(os.environ.get("BERTQA_SHARED", REPO.parent / "shared")).resolve()
        (self.scratch / "shared").symlink_to(shared)
        (self.work / "examples").symlink_to(REPO / "examples")
        bin_dir = self.scratch / "bin"
        bin_dir.mkdir()
        (bin_dir / "bertqa").symlink_to(binary.resolve())
        self.env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HF_HUB_OFFLINE="1")
        self.python = python
        self.failures: list[str] = []
        self.ran = 0

    def fail(self, where: str, message: str):
        self.failures.append(f"README.md:{where}: {message}")
        print(f"FAIL README.md:{where}: {message}", file=sys.stderr)

    def shell(self, command: str, where: str, background: list):
        if command.rstrip().endswith("&"):
            proc = subprocess.Popen(
                ["bash", "-c", command.rstrip()[:-1]], cwd=self.work, env=self.env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            background.append(proc)
            if not wait_for_health("http://127.0.0.1:8080/health", 120):
                self.fail(where, f"`{command}` did not answer /health within 120 s")
            return None
        began = time.time()
        result = subprocess.run(
            ["bash", "-c", command], cwd=self.work, env=self.env, capture_output=True,
            text=True, timeout=900,
        )
        # Where CI's minutes go: one line per command.
        print(f"README.md:{where}: {time.time() - began:6.1f} s  {command.splitlines()[0][:90]}",
              file=sys.stderr)
        if result.returncode != 0:
            self.fail(where, f"`{command}` exited {result.returncode}: {result.stderr[-2000:]}")
            return None
        return result.stdout

    def console(self, start: int, body: list[str]):
        background: list[subprocess.Popen] = []
        try:
            for command, expected in console_steps(body):
                where = f"{start}"
                self.ran += 1
                out = self.shell(command, where, background)
                if out is None:
                    continue
                want, got = comparable(expected), comparable(out.split("\n"))
                if not same_lines(want, got):
                    self.fail(where, f"`{command.splitlines()[0]}` printed\n"
                              + "\n".join(got) + "\nwhere the README shows\n" + "\n".join(want))
        finally:
            for proc in background:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)

    def sh(self, start: int, body: list[str]):
        text = "\n".join(body)
        commands = re.split(r"(?<!\\)\n", text)
        for command in commands:
            command = command.strip()
            if not command.startswith("cargo run"):
                continue
            command = re.sub(r"^cargo run (--release )?-- ", "bertqa ", command)
            self.ran += 1
            self.shell(command, f"{start}", [])

    def python_block(self, start: int, body: list[str]):
        if not self.python:
            return
        self.ran += 1
        script = self.scratch / f"example_{start}.py"
        script.write_text("\n".join(body) + "\n", encoding="utf-8")
        result = subprocess.run(
            [self.python, str(script)], cwd=self.work, env=self.env, capture_output=True,
            text=True, timeout=600,
        )
        if result.returncode != 0:
            self.fail(f"{start}", f"python example exited {result.returncode}: "
                      f"{result.stderr[-2000:]}")
            return
        shown = [l[2:] for l in body if l.startswith("# ")]
        printed = [l for l in result.stdout.split("\n") if l.strip()]
        if len(printed) != len(shown):
            self.fail(f"{start}", f"python example printed {len(printed)} lines, the README "
                      f"shows {len(shown)}:\n" + "\n".join(printed))
            return
        for want, got in zip(shown, printed):
            if not matches_shown(want, got):
                self.fail(f"{start}", f"python example printed\n{got}\nwhere the README shows\n{want}")


NUMBER = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")


def same_lines(want: list[str], got: list[str]) -> bool:
    """Equal but for the last digits of decimal numbers (scores differ by ~1e-7 between the
    instruction sets a product runs on): the text between them must be the same, and each
    number within 1e-4."""
    if len(want) != len(got):
        return False
    for w, g in zip(want, got):
        if NUMBER.split(w) != NUMBER.split(g):
            return False
        for a, b in zip(NUMBER.findall(w), NUMBER.findall(g)):
            if abs(float(a) - float(b)) > 1e-4:
                return False
    return True


def matches_shown(shown: str, printed: str) -> bool:
    """`shown` with `...` standing for any text (the rest of a number, elided items)."""
    pattern = ".*".join(re.escape(part) for part in shown.split("..."))
    return re.fullmatch(pattern, printed.strip()) is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary", type=pathlib.Path)
    parser.add_argument("--python", help="interpreter that imports bertqa, for ```python blocks")
    parser.add_argument("--python-only", action="store_true",
                        help="run the ```python blocks alone (with --python)")
    args = parser.parse_args()
    if not args.binary.is_file():
        print(f"error: {args.binary}: no such binary (build it first)", file=sys.stderr)
        return 2
    runner = Runner(args.binary, args.python)
    try:
        readme = (REPO / "README.md").read_text(encoding="utf-8")
        for lang, start, body in blocks(readme):
            if lang == "console" and not args.python_only:
                runner.console(start, body)
            elif lang == "sh" and not args.python_only:
                runner.sh(start, body)
            elif lang == "python":
                runner.python_block(start, body)
    finally:
        shutil.rmtree(runner.scratch, ignore_errors=True)
    passed = runner.ran - len(runner.failures)
    print(f"readme: {passed} passed, {len(runner.failures)} failed")
    return 1 if runner.failures else 0


if __name__ == "__main__":
    sys.exit(main())
