"""The demo runs from a plain `pip install .` (no dev extras) and its smoke mode checks itself
(`make check-install` runs `dunning demo --smoke` from such a venv)."""

from __future__ import annotations

import json
import subprocess
import sys

from dunning.cli.demo import smoke_failures

DEV_ONLY = ("httpx", "aiosmtpd", "pytest", "hypothesis", "yaml")


BLOCKER = f"""
import sys
class Blocker:  # as if `pip install .` had not installed the dev extras
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {DEV_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None
sys.meta_path.insert(0, Blocker())
"""


def test_the_demo_imports_without_dev_only_packages() -> None:
    code = BLOCKER + (
        "import json, dunning.cli.demo, dunning.cli.server, dunning.webhooks, worker\n"
        "from dunning.cli import app\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {DEV_ONLY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == []


GOOD = {
    "messages": {"email:sent": 19, "sms:sent": 8, "sms:skipped": 7},
    "outcomes": {"exhausted": 6, "recovered": 1},
    "webhooks": {"signed_stop": 200, "forged_stop": 403},
}


def test_a_good_run_passes_the_smoke_check() -> None:
    assert smoke_failures(GOOD) == []


def test_the_smoke_check_names_what_went_wrong() -> None:
    bad = {
        "messages": {"email:sent": 3},
        "outcomes": {"exhausted": 7},
        "webhooks": {"signed_stop": 403, "forged_stop": 200},
    }
    assert smoke_failures(bad) == [
        "no SMS was sent",
        "no case was recovered",
        "the signed STOP webhook got HTTP 403",
        "the forged STOP webhook got HTTP 200",
    ]
