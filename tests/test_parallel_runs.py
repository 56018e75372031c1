"""The test suite's own parallel run: ``--dist loadgroup`` (README, .ci/run) builds a module-scoped
fixture once, on one worker, for all the tests that use it (tests/conftest.py's scheduler)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

SHARED = """
import os
import pytest

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with open(os.environ["SETUPS"], "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
    return 1
""" + "".join(f"\ndef test_uses_{i}(built):\n    assert built == 1\n\ndef test_alone_{i}():\n    pass\n"
            for i in range(8))

OTHER = "".join(f"\ndef test_other_{i}():\n    pass\n" for i in range(8))


def test_module_fixture_is_built_once_across_workers(tmp_path):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_shared.py").write_text(SHARED)
    (tmp_path / "test_other.py").write_text(OTHER)
    setups = tmp_path / "setups.txt"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-q"],
        cwd=tmp_path, env={**os.environ, "SETUPS": str(setups)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "24 passed" in result.stdout
    assert len(setups.read_text().split()) == 1, setups.read_text()
