"""What the serve tests share: a small real database (built once per test session), copies of it
for tests that write, and a real ``protodb serve`` process on a free loopback port."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import protodb
from protodb.pipeline.config import AddClassRequest
from tests.conftest import child_env, clean_env

TOKEN = "serve-test-token-0123456789abcdef"
_BUILT: dict[str, Path] = {}


def scene(seed: int, size=(96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Left half 'red box' (label 0), right half 'blue stripes' (label 1), a little noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = (rng.random((h, w, 3)) * 40).astype(np.uint8)
    lab = np.ones((h, w), np.uint8)
    img[:, : w // 2] += np.array([200, 30, 30], np.uint8)
    stripes = (np.arange(w)[None, w // 2:] // 4) % 2 == 0
    img[:, w // 2:][np.broadcast_to(stripes, (h, w - w // 2))] += np.array([20, 60, 200], np.uint8)
    lab[:, : w // 2] = 0
    return img, lab


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def clear_env() -> None:
    """No PROTODB_* variable may redirect the databases these tests build (catalog, home, LLM, CLIP...)."""
    clean_env()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_scene_db(root: Path, catalog_url: str | None = None) -> Path:
    """Two exemplar classes (tiny preset) from synthetic scenes and the vocabulary ``scene``
    (exemplars in ROOT/exemplars, masks in ROOT/masks, the database in ROOT/db)."""
    clear_env()
    ex, masks = root / "exemplars", root / "masks"
    ex.mkdir(parents=True)
    masks.mkdir()
    for s in range(3):
        img, lab = scene(s)
        PIL.Image.fromarray(img).save(ex / f"s{s}.png")
        PIL.Image.fromarray(lab).save(masks / f"s{s}.png")
    home = root / "db"
    with protodb.open(home, catalog_url=catalog_url) as db:
        builder = db.builder(preset="tiny")
        for value, name in ((0, "red box"), (1, "blue stripes")):
            # the scenes' label maps have no background label (0 and 1 are the classes)
            builder.add_class(AddClassRequest(name, images=0, exemplars=ex, masks=masks, mask_value=value,
                                              bg_value=None, k=4))
        db.vocabs.create("scene", ["red box", "blue stripes"])
    return home


@pytest.fixture(scope="session")
def scene_db(tmp_path_factory) -> Path:
    """The shared read-only database (built once even when several modules use this fixture)."""
    if "scene" not in _BUILT:
        _BUILT["scene"] = build_scene_db(tmp_path_factory.mktemp("serve-scene"))
    clear_env()
    return _BUILT["scene"]


@pytest.fixture
def db_copy(scene_db, tmp_path) -> Path:
    """A private copy of the scene database, for tests that write."""
    target = tmp_path / "db"
    shutil.copytree(scene_db, target, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    return target


@pytest.fixture(scope="session")
def scene_image() -> bytes:
    return png(scene(10)[0])


class ServerProcess:
    """``protodb serve`` in a child process on a free port of 127.0.0.1; always stopped by ``stop``."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None,
                 timeout: float = 120.0):
        full_env = child_env()
        full_env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
        self.log_path = log or Path(home).parent / "serve.log"
        self._log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "protodb_cli.main", "serve", "--db", str(home), "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, env=full_env)
        self.url = self._read_url(timeout)
        self.wait_healthy(timeout)

    def _read_url(self, timeout: float) -> str:
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        line = (found[0] if found else "").strip()
        if not line.startswith("http://127.0.0.1:"):
            self.stop()
            raise AssertionError(f"protodb serve printed no URL: {line!r}; log: {self.log()}")
        return line.rstrip("/")

    def wait_healthy(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=5) as r:
                    if json.loads(r.read())["ok"]:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"protodb serve never became healthy; log: {self.log()}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-3000:]

    def stop(self, sig_term: bool = True, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate() if sig_term else self.proc.kill()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self._log.closed:
            self._log.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


def chromium_or_skip() -> str:
    """/usr/bin/chromium, or skip saying why (in CI, fail instead)."""
    path = "/usr/bin/chromium"
    problem = None
    if not Path(path).exists():
        problem = f"no Chromium at {path} (apt-get install chromium chromium-driver)"
    else:
        try:
            import playwright.sync_api  # noqa: F401 - optional: only this test needs it
        except ImportError:
            problem = "playwright is not installed (pip install 'protodb[dev]')"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {problem}")
        pytest.skip(problem)
    return path
