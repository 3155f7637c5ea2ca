"""Output directories and the files in them: nothing a user already has is lost.

The rules every recipe, the trainer and the command line follow:

* an existing, non-empty output directory is refused unless ``overwrite`` (start again) or
  ``resume`` (continue from a checkpoint inside it) is given;
* ``resume`` needs a checkpoint (``**/checkpoint/last.pt``) in the directory: a non-empty
  directory without one is an error, never a silent fresh start over the user's files;
* ``overwrite`` clears only a directory that kdfast wrote (it holds :data:`MARKER`), so a
  mistyped ``--out`` never deletes someone's data;
* every file is written atomically (a temporary file in the same directory, then
  ``os.replace``), so a run killed mid-write leaves the previous good file;
* a truncated or foreign checkpoint/cache gives one clear error naming the file.

:func:`check_output_dir` only looks (the command line calls it before any work);
:func:`prepare_output_dir` applies the rule and creates the directory.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

MARKER = ".kdfast-output"
CHECKPOINT = Path("checkpoint") / "last.pt"


def _non_empty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def has_checkpoint(path) -> bool:
    """Whether ``path`` holds a training checkpoint at any depth (multi-stage recipes keep
    one per stage: ``step1/checkpoint/last.pt``, ...)."""
    path = Path(path)
    return (path / CHECKPOINT).is_file() or any(path.glob(f"**/{CHECKPOINT.as_posix()}"))


def check_output_dir(path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Raises FileExistsError / FileNotFoundError / ValueError when ``path`` may not be used
    as an output directory under the rules above. Writes nothing."""
    if overwrite and resume:
        raise ValueError("give either overwrite (start again) or resume (continue), not both")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output {path} exists and is not a directory")
    if not _non_empty(path):
        return
    if resume:
        if not has_checkpoint(path):
            raise FileNotFoundError(f"nothing to resume in {path}: it holds no checkpoint "
                                    f"({CHECKPOINT}); use a new output directory or --overwrite")
        return
    if not overwrite:
        raise FileExistsError(f"output directory {path} already exists and is not empty: pass "
                              "--overwrite (start again) or --resume (continue)")
    if not (path / MARKER).is_file():
        raise FileExistsError(f"--overwrite refused: {path} was not written by kdfast (no "
                              f"{MARKER} in it); remove it yourself or choose another --out")


def prepare_output_dir(path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Checks ``path`` (:func:`check_output_dir`), clears it for ``overwrite``, creates it
    and marks it as kdfast's. Returns it as a Path."""
    check_output_dir(path, overwrite=overwrite, resume=resume)
    path = Path(path)
    if overwrite and _non_empty(path):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).exists():
        atomic_write_text(path / MARKER, "written by kdfast; --overwrite may clear this "
                                         "directory\n")
    return path


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


def load_checked(path, *, what: str = "file", **kwargs):
    """``torch.load`` whose failure on a truncated or foreign file is one ValueError naming
    the file (and what it should have been)."""
    import torch

    try:
        return torch.load(path, **kwargs)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        detail = str(e).split(". ")[0].splitlines()[0] if str(e) else ""
        raise ValueError(f"cannot read the {what} {path}: it is truncated or not a kdfast "
                         f"file ({type(e).__name__}: {detail}); delete it or start with "
                         "--overwrite") from None
