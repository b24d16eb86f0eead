"""Atomic, checksummed file writes shared by stores and steerers (safetensors + JSON, no pickles).

A reader can tell a finished file from a half-written one: every write goes to a temporary file
in the same directory and is ``os.replace``-d into place, and the JSON manifest that names the
tensor files (with their sha256) is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CorruptFileError(ValueError):
    """A file that is missing, truncated, or does not match its recorded checksum."""


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) or raise a clear error if it cannot be written."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir would say "File exists", which names neither
        raise PermissionError(f"cannot create directory {path}: {blocker} is a file, "
                              "not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create directory {path}: {err.strerror}") from err
    if not os.access(path, os.W_OK):
        raise PermissionError(f"directory {path} is not writable")
    return path


def default_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file or directory under the umask
    (``mkstemp``/``mkdtemp`` make them private to their owner instead)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place: a
    crash never leaves a half-written ``path``. The file gets the usual permissions (mkstemp
    alone would leave it readable by its owner only)."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, default_mode())
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file (reports, Markdown)."""
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)
    atomic_write(path, write)


def write_csv(path: str | Path, frame) -> None:
    """Atomically write a pandas DataFrame as CSV (no index); gzip-compressed when ``path``
    ends in ``.gz`` (the temporary name does not, so the compression is named here)."""
    compression = "gzip" if str(path).endswith(".gz") else None
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, compression=compression))


def read_csv(path: str | Path, what: str, columns: tuple[str, ...] = ()):
    """Read a CSV written by :func:`write_csv`, naming ``what`` if it is damaged."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{what}: {path} is corrupted ({err})") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CorruptFileError(f"{what}: {path} lacks column(s) {missing}")
    return frame


def read_json(path: str | Path, what: str) -> Any:
    """Read JSON written by :func:`write_json`; name ``what`` in the error if it is damaged.
    Any JSON value: a hand-edited file may hold a list where an object belongs, which the
    callers name (e.g. ``load_steerer``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{what}: {path} is corrupted (not valid JSON: {err})") from err


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> str:
    """Atomically write a safetensors file and return its sha256."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, default_mode())  # save_file recreates the file owner-only (0600)
    atomic_write(path, write)
    return sha256_of(path)


def load_tensors(path: str | Path, sha256: str | None, what: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file, checking its sha256 when one was recorded."""
    path = Path(path)
    if not path.exists():
        raise CorruptFileError(f"{what}: file {path} is missing")
    if sha256 is not None and sha256_of(path) != sha256:
        raise CorruptFileError(f"{what}: {path} is truncated or corrupted "
                               "(its sha256 does not match the one recorded when it was written)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(f"{what}: {path} is truncated or corrupted ({err})") from err


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able description (used to recognise a resumable job)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def versions() -> dict[str, str]:
    """Package versions recorded in every artefact for provenance."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("steerinterp", "transformer-lens", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out
