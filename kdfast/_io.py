"""Atomic writes: a temporary file (or directory) beside the target, then ``os.replace``, so
a run killed mid-write leaves the previous good file, never half of one. Shared by everything
that writes (recipes' outputs, checkpoints, caches of kdfast.data)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def _temp_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _as_if_created(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp make private (0600/0700) entries: give them the permissions an
    ordinary open()/mkdir() would have under the user's umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def atomic_write(path, write) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then renamed over it: ``path``
    holds the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        write(tmp)
        _as_if_created(tmp, 0o666)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_save(obj, path) -> None:
    """``torch.save`` that never leaves half a file at ``path``."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_dir(path, write) -> None:
    """Calls ``write(tmp_dir)`` and then puts ``tmp_dir`` in place of ``path`` (e.g. a
    ``save_pretrained``), so ``path`` is always either the old or the new complete model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        write(tmp)
        _as_if_created(tmp, 0o777)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
