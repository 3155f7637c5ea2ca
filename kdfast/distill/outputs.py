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

import shutil
from pathlib import Path

from kdfast._io import (  # noqa: F401 (the writers live in kdfast._io, shared with kdfast.data)
    atomic_save,
    atomic_save_dir,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
)

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
