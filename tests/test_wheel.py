"""The wheel: built as `make wheel` builds it (the Makefile's `wheel-only` recipe, with the
torch running these tests), installed into a fresh virtual environment that holds only the
pinned torch and kdfast's light run-time dependencies, then used from outside the source tree.

A wheel is good for the torch major.minor it was built with. A torch of another major.minor is
simulated by editing the installed copy's build record (site-packages/kdfast/_build_info.py,
written by setup.py at build time); an unloadable .so by overwriting the installed
kdfast/_C*.so. Both must give a clear reason in `kdfast info` and a working reference fallback.

The build (about 3-4 minutes on 2 cores) is cached between runs: its source copy keeps mtimes,
so an unchanged csrc/ compiles nothing. Cache: $KDFAST_WHEEL_CACHE, else
$TMPDIR/kdfast-wheel-test-<uid>/py<X.Y>-torch<version>/.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
CACHE = Path(os.environ.get("KDFAST_WHEEL_CACHE") or Path(tempfile.gettempdir())
             / f"kdfast-wheel-test-{os.getuid()}") / f"py{PYVER}-torch{torch.__version__}"
TORCH_PIN = f"torch=={torch.__version__.split('+')[0]}"
LIGHT_DEPS = ["numpy", "tqdm", "pyyaml", "safetensors"]


def _run(cmd, timeout, cwd=None, env=None, check=True):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {r.returncode}\n"
                    f"--- stdout\n{r.stdout[-6000:]}\n--- stderr\n{r.stderr[-6000:]}")
    return r


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two test runs at once share the build cache
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("make") is None:
        pytest.fail("make is needed to build the wheel as `make wheel` does")
    dist = CACHE / "dist"
    with _locked(CACHE / "lock"):
        env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
        _run(["make", "-C", ROOT, "--no-print-directory", "wheel-only", f"PY={sys.executable}",
              f"WHEEL_SRC={CACHE / 'src'}", f"DIST={dist}"], timeout=1800, env=env)
        wheels = sorted(dist.glob("kdfast-*.whl"))
        assert len(wheels) == 1, wheels
        out = tmp_path_factory.mktemp("wheel") / wheels[0].name
        shutil.copy2(wheels[0], out)  # our own copy: another run may rebuild the cached one
    return out


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv: the pinned torch, kdfast's light dependencies, the wheel with --no-deps."""
    root = tmp_path_factory.mktemp("venv")
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", root], timeout=300)
    py = root / "bin" / "python"
    _run([py, "-m", "pip", "install", "-q", TORCH_PIN, *LIGHT_DEPS], timeout=900)
    _run([py, "-m", "pip", "install", "-q", "--no-deps", wheel], timeout=300)
    return root


def _site_kdfast(venv: Path) -> Path:
    py = venv / "bin" / "python"
    r = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], 60)
    return Path(r.stdout.strip()) / "kdfast"


def _env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "KDFAST_BACKEND", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _kdfast(venv, *args, cwd):
    return _run([venv / "bin" / "kdfast", *args], timeout=300, cwd=cwd, env=_env(venv))


# kl_div through kdfast's chosen backend vs the reference, from the installed copy
KL_SCRIPT = r"""
import sys, torch, kdfast
from kdfast import _ext
assert "site-packages" in kdfast.__file__, kdfast.__file__
backend = sys.argv[1]
g = torch.Generator().manual_seed(0)
s = torch.randn(37, 101, generator=g, dtype=torch.float64, requires_grad=True)
t = torch.randn(37, 101, generator=g, dtype=torch.float64)
loss = kdfast.losses.kl_div(s, t, temperature=2.0, backend=backend)
loss.backward()
s2 = s.detach().clone().requires_grad_(True)
ref = kdfast.losses.kl_div(s2, t, temperature=2.0, backend="reference")
ref.backward()
torch.testing.assert_close(loss, ref)
torch.testing.assert_close(s.grad, s2.grad)
print("C loaded:", "kdfast._C" in sys.modules)
print("cpu present:", _ext.has("cpu"))
print("why:", _ext.why_missing("cpu"))
try:
    kdfast.losses.kl_div(s, t, backend="cpu")
    print("explicit cpu: ran")
except ValueError as e:
    print("explicit cpu: ValueError:", e)
print("loss", float(loss))
"""


def _kl(venv, backend, cwd):
    return _run([venv / "bin" / "python", "-c", KL_SCRIPT, backend], timeout=300, cwd=cwd,
                env=_env(venv)).stdout


def test_wheel_holds_extension_and_build_record(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("kdfast/_C.") and n.endswith(".so") for n in names), names
    assert "kdfast/_build_info.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "csrc/")) for n in names)
    record = {}
    exec(zipfile.ZipFile(wheel).read("kdfast/_build_info.py").decode(), record)
    assert record["TORCH_VERSION"] == torch.__version__
    assert record["TORCH_CUDA"] == torch.version.cuda
    assert record["CXX11_ABI"] == bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    assert "kdfast._C" in record["EXTENSIONS"]
    has_cuda = any(n.startswith("kdfast/_cuda.") for n in names)
    assert has_cuda == ("kdfast._cuda" in record["EXTENSIONS"])
    if torch.version.cuda is None:
        assert not has_cuda and "without CUDA" in record["CUDA_SKIPPED"]


def test_installed_wheel_info_and_kl_div(venv, tmp_path):
    out = _kdfast(venv, "info", cwd=tmp_path).stdout
    assert f"torch        {torch.__version__}" in out, out
    assert "cpu        present" in out, out
    r = _kl(venv, "cpu", tmp_path)
    assert "C loaded: True" in r and "explicit cpu: ran" in r, r


def test_other_torch_refuses_extension_and_falls_back(venv, tmp_path):
    """The installed build record says torch 2.11: kdfast._C is never dlopen'ed."""
    record = _site_kdfast(venv) / "_build_info.py"
    original = record.read_text()
    major, minor = torch.__version__.split(".")[:2]
    other = f"{major}.{int(minor) - 1 if int(minor) > 0 else int(minor) + 1}"
    try:
        record.write_text(original.replace(f"TORCH_VERSION = {torch.__version__!r}",
                                           f"TORCH_VERSION = '{other}.0+cu130'"))
        assert record.read_text() != original
        out = _kdfast(venv, "info", cwd=tmp_path).stdout
        want = (f"kdfast._C was built for torch {other} but torch {major}.{minor} is running: "
                "reinstall kdfast for this torch")
        assert f"cpu        absent ({want}" in out, out
        assert "using the reference backend" in out, out
        r = _kl(venv, "auto", tmp_path)
        assert "C loaded: False" in r and "cpu present: False" in r, r
        assert "explicit cpu: ValueError" in r and want in r, r
    finally:
        record.write_text(original)


def test_unloadable_extension_is_reported_and_falls_back(venv, tmp_path):
    """A .so the dynamic loader rejects (as with an undefined symbol) is caught, not raised."""
    so = next(_site_kdfast(venv).glob("_C.*.so"))
    saved = tmp_path / so.name
    shutil.copy2(so, saved)
    try:
        so.write_bytes(b"\x7fELF this is not a shared object")
        out = _kdfast(venv, "info", cwd=tmp_path).stdout
        assert "cpu        absent (kdfast._C could not be loaded into torch" in out, out
        assert "reinstall kdfast for this torch" in out and "using the reference backend" in out
        r = _kl(venv, "auto", tmp_path)
        assert "cpu present: False" in r and "explicit cpu: ValueError" in r, r
    finally:
        shutil.copy2(saved, so)
    assert "cpu        present" in _kdfast(venv, "info", cwd=tmp_path).stdout
