"""Start-up and shut-down of the server's resources: a start that fails part-way leaves nothing
running, and ``vcounter serve`` says why it did not start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from business.exceptions import FlowError
from server.app import create_app, flows_ctx
from server.appkeys import DB, HUB, IDENTITY, LOOP_LAG
from server.config import Config

REPO = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, **changes: object) -> Config:
    return replace(
        Config(
            data_dir=tmp_path / "var",
            tls=False,
            port=0,
            master_key_file=tmp_path / "keys" / "master.key",
            signing_key_file=tmp_path / "keys" / "signing.pem",
        ),
        **changes,
    )


def _broken_flows(tmp_path: Path) -> tuple[Path, int]:
    """A copy of the shipped flows whose account-opening file ends in a YAML syntax error."""
    flows = tmp_path / "flows"
    shutil.copytree(REPO / "flows", flows)
    broken = flows / "account_opening.yaml"
    text = broken.read_text(encoding="utf-8")
    broken.write_text(text + "steps: [\n", encoding="utf-8")
    return flows, text.count("\n")


def _face_workers() -> list[psutil.Process]:
    """This process's pool workers (not multiprocessing's resource tracker, which outlives them)."""
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if "resource_tracker" not in " ".join(child.cmdline())
    ]


async def test_a_broken_flow_file_tears_down_what_started_before_it(tmp_path: Path) -> None:
    flows, _ = _broken_flows(tmp_path)
    app = create_app(_config(tmp_path, identity=True, identity_workers=1, flows_dir=flows))
    started: dict[str, object] = {}

    async def note_started(app: web.Application) -> AsyncIterator[None]:
        # runs between the identity and flow contexts: the face workers are up by now
        await app[IDENTITY].worker.start()
        started.update(workers=_face_workers(), hub=app[HUB], db=app[DB])
        yield

    contexts = list(app.cleanup_ctx)
    app.cleanup_ctx.clear()
    at = contexts.index(flows_ctx)
    app.cleanup_ctx.extend([*contexts[:at], note_started, *contexts[at:]])
    runner = web.AppRunner(app)
    with pytest.raises(FlowError, match="YAML syntax error"):
        await runner.setup()
    assert started["workers"], "the face workers should have been running before the failure"
    await runner.cleanup()

    _, alive = psutil.wait_procs(started["workers"], timeout=10)  # type: ignore[arg-type]
    assert not alive, f"face worker processes left running: {alive}"
    assert started["hub"]._closed  # type: ignore[attr-defined]
    assert started["db"]._closed  # type: ignore[attr-defined]
    assert LOOP_LAG not in app  # the contexts after the failing one never started


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``vcounter serve`` in a child process with ``env``, until it exits."""
    keys = {
        "VCOUNTER_MASTER_KEY_FILE": str(tmp_path / "keys" / "master.key"),
        "VCOUNTER_SIGNING_KEY_FILE": str(tmp_path / "keys" / "signing.pem"),
    }
    command = [sys.executable, "-m", "server.cli", "serve", "--no-tls", "--no-identity"]
    return subprocess.run(
        [*command, "--port", "0", "--data-dir", str(tmp_path / "var")],
        cwd=tmp_path,
        env={**os.environ, **keys, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_with_a_broken_flow_file_exits_with_the_file_and_line(tmp_path: Path) -> None:
    flows, lines = _broken_flows(tmp_path)
    done = _serve(tmp_path, VCOUNTER_FLOWS_DIR=str(flows))
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("vcounter: the server did not start: "), done.stderr
    assert (
        f"account_opening.yaml:{lines + 1}" in last or f"account_opening.yaml:{lines + 2}" in last
    ), last
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "DATABASE_URL",
            "postgresql://vc:s3cret-pw@127.0.0.1:1/vcounter",
            "the database postgresql+psycopg://vc:***@127.0.0.1:1/vcounter cannot be reached",
        ),
        (
            "VCOUNTER_REDIS_URL",
            "redis://:s3cret-pw@127.0.0.1:1/0",
            "Redis at 127.0.0.1:1/0 cannot be reached",
        ),
    ],
    ids=["postgresql", "redis"],
)
def test_serve_with_an_unreachable_service_exits_with_one_clear_line(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    done = _serve(tmp_path, **{variable: value})
    assert done.returncode == 1, done.stderr
    assert f"vcounter: the server did not start: {expected}" in done.stderr
    assert "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr + done.stdout
