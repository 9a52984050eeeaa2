"""The documentation's examples are tests: an example that drifts from the code fails here.

- Every ```toml block in README.md and docs/*.md is a config file `taxiway check` must accept
  (exit 0; warnings allowed, e.g. for a variable like `${TAXIWAY_AFFINITY_SECRET}` that is unset
  here), unless a comment right above it says what else it is.
- Comments of the form `<!-- doc-test: ... -->` right above a block (invisible when rendered):
  - `file NAME`: the TOML block is also written to NAME for the page's runnable blocks;
  - `scenario`: a `taxiway bench` scenario, parsed by the scenario loader instead;
  - `run`: the ```sh block is run, in order with the page's other runnable blocks, in one
    temporary directory, and must exit 0;
  - `run demo`: the same, while the demo (`taxiway up` with the repository's taxiway.toml and
    the flights app) runs with `taxiway.toml` in that directory;
  - `run; expect REGEX; expect REGEX`: each regular expression must be found in the output, so
    the block shows what the text says it shows.
- Ports the docs use (8080, 9001, ...) become free ports, in files and commands alike, so a
  runnable block never touches a deployment the developer has running.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from taxiway.bench.scenario import load_scenario
from tests.conftest import free_port, run_taxiway, taxiway_env
from tests.flights_support import base_env, prepared_dir
from tests.test_flights_up import example_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOC_PORTS = (8080, 8081, 8082, 8443, 9001, 9002, 9901)
_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!-- doc-test: (.+?) -->$")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str
    directive: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        return self.directive.split(";")[0].strip()

    @property
    def expects(self) -> list[str]:
        parts = [p.strip() for p in self.directive.split(";")[1:]]
        assert all(p.startswith("expect ") for p in parts), f"{self.id}: unknown directive {self.directive!r}"
        return [p.removeprefix("expect ") for p in parts]


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        d = _DIRECTIVE.match(prev.strip())
        found.append(Block(page, start + 1, m.group(1), "\n".join(body) + "\n", d.group(1) if d else ""))
        i += 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]
CONFIGS = [b for b in ALL if b.lang == "toml" and b.kind != "scenario"]
SCENARIOS = [b for b in ALL if b.lang == "toml" and b.kind == "scenario"]
RUN_PAGES = sorted({b.page for b in ALL if b.kind.startswith("run")})


def test_the_docs_have_examples_to_test() -> None:
    """A guard on the parser: if it stopped finding blocks, every test below would pass vacuously."""
    assert len(CONFIGS) >= 8 and SCENARIOS and RUN_PAGES
    assert all(b.kind in ("", "scenario", "run", "run demo") or b.kind.startswith("file ")
               for b in ALL), [b.id for b in ALL if b.directive]
    for b in ALL:
        b.expects   # noqa: B018 (reading it checks every directive part is an `expect`)


def env_with_taxiway() -> dict[str, str]:
    """The environment a user has after `source .venv/bin/activate`: `taxiway` on PATH."""
    env = taxiway_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def taxiway(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_taxiway(*args, env=env_with_taxiway(), cwd=cwd)


@pytest.mark.parametrize("block", CONFIGS, ids=[b.id for b in CONFIGS])
def test_toml_example_passes_taxiway_check(block: Block, tmp_path: Path) -> None:
    if ".taxiway/tls/" in block.text:   # the files `taxiway cert dev --dir .taxiway/tls` makes
        made = taxiway(["cert", "dev", "--dir", ".taxiway/tls"], tmp_path)
        assert made.returncode == 0, made.stderr
    cfg = tmp_path / "example.toml"
    cfg.write_text(block.text)
    checked = taxiway(["check", "-c", str(cfg)], tmp_path)
    assert checked.returncode == 0 and "ok" in checked.stdout, \
        f"{block.id}: taxiway check said:\n{checked.stdout}{checked.stderr}"
    assert "Traceback" not in checked.stderr


@pytest.mark.parametrize("block", SCENARIOS, ids=[b.id for b in SCENARIOS])
def test_scenario_example_loads(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTS_DEMO_PASSWORD", "from-the-environment")
    path = tmp_path / "scenario.toml"
    path.write_text(block.text)
    sc = load_scenario(path, "127.0.0.1:8080")
    assert sc.requests


def port_map() -> dict[int, int]:
    return {p: free_port() for p in DOC_PORTS}


def substitute(text: str, ports: dict[int, int]) -> str:
    return re.sub(r"(?<![\d.])(" + "|".join(map(str, ports)) + r")(?!\d)",
                  lambda m: str(ports[int(m.group(1))]), text)


class Demo:
    """The README's demo, on free ports, with taxiway.toml in the runnable blocks' directory."""

    def __init__(self, cwd: Path, ports: dict[int, int]) -> None:
        workdir = prepared_dir()
        self.env = base_env(workdir)
        self.port, self.admin = ports[8080], ports[9901]
        example_config(cwd, self.port, self.admin)
        self.log = cwd / "up.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "taxiway", "up", "--config", "taxiway.toml"],
                                         cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the demo did not answer\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def run_shell(text: str, cwd: Path, env: dict[str, str], what: str, expects: list[str]) -> None:
    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", text], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        try:   # whatever the block left running in the background
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{out[-4000:]}"
    assert "Traceback" not in out, f"{what}:\n{out[-4000:]}"
    for pattern in expects:
        assert re.search(pattern, out), f"{what}: no {pattern!r} in its output:\n{out[-4000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUN_PAGES])
def test_runnable_examples_run(page: Path, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the examples use curl (apt-get install curl); scripts/test.sh installs it")
    ports = port_map()
    env = env_with_taxiway()
    demo: Demo | None = None
    try:
        for b in blocks(page):
            if b.kind.startswith("file "):
                (tmp_path / b.kind.split(None, 1)[1]).write_text(substitute(b.text, ports))
            elif b.kind.startswith("run"):
                if b.kind == "run demo" and demo is None:
                    demo = Demo(tmp_path, ports)
                    env |= {k: v for k, v in demo.env.items() if k.startswith(("DJANGO", "FLIGHTS"))}
                elif b.kind == "run" and demo is not None:
                    demo.stop()   # the walkthrough stops the demo before the next part
                    demo = None
                run_shell(substitute(b.text, ports), tmp_path, env, b.id, b.expects)
    finally:
        if demo is not None:
            demo.stop()
