import json
import subprocess
import sys

import kdfast
from kdfast import _ext


def test_info_reports_backends_and_reasons():
    info = kdfast.info()
    assert info["torch"] and info["kdfast"] == kdfast.__version__
    for name in ("cpu", "cuda", "triton", "reference"):
        b = info["backends"][name]
        assert b["present"] == _ext.has(name)
        assert b["present"] or b["why_absent"]
    assert info["backends"]["reference"]["present"]


def test_cli_info_json():
    out = subprocess.run([sys.executable, "-m", "kdfast.cli", "info", "--json"], capture_output=True,
                         text=True, check=True)
    assert set(json.loads(out.stdout)["backends"]) == {"cpu", "cuda", "triton", "reference"}


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "kdfast.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "info" in out.stdout and "bench" in out.stdout
