"""Private file handling for the experiments: atomic writes and verified checkpoints.

Every output file is written to a temporary file beside it, flushed and fsynced, renamed
over the target and the directory fsynced: a reader (or a crash, a kill, a full disk)
sees the old file or the new one, never a torn one. Temporary files carry the suffix
``.quflow-tmp``; :func:`remove_stale_temporaries` deletes those a killed run left behind.

A checkpoint is a one-line header ``quflow-checkpoint v1 sha256=<hex>`` followed by the
bytes of ``torch.save(state)``. Loading checks the digest, then unpickles with
``weights_only=True`` (tensors, numbers, strings, lists and dicts only: nothing in a
results folder can run code), then checks that the state is self-consistent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

TMP_SUFFIX = ".quflow-tmp"
_MAGIC = b"quflow-checkpoint v1 sha256="


class CorruptCheckpoint(Exception):
    """A checkpoint failed its integrity or consistency check."""


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then make it ``path`` durably.

    The file gets the permissions of an ordinary new file (``0666 & ~umask``). On any
    error (a full disk, an interrupt) the temporary file is removed and ``path`` is left
    as it was.

    Raises:
        OSError: the file could not be written; its ``filename`` is ``path`` (not the
            temporary file), its ``errno`` and ``strerror`` the cause (e.g. ``ENOSPC``).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=TMP_SUFFIX)
    except OSError as exc:
        raise _naming(exc, path) from exc
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise
    _fsync_dir(path.parent)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as an OSError of the same kind that names ``path``."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: Path, rows: list[list]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    write_atomic(path, write)


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    fmt = Path(path).suffix.lstrip(".") or "png"
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))


def remove_stale_temporaries(directory: Path) -> int:
    """Deletes the temporary files a killed run left in ``directory``; returns how many."""
    count = 0
    if Path(directory).is_dir():
        for p in Path(directory).glob(f".*{TMP_SUFFIX}"):
            try:
                p.unlink()
                count += 1
            except OSError:
                pass
    return count


def save_checkpoint(path: Path, state: dict) -> None:
    """Writes ``state`` (tensors, numbers, strings, lists, dicts) with its digest, atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(header + payload))


def load_checkpoint(path: Path) -> dict:
    """Reads a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CorruptCheckpoint: unreadable, truncated, not a quflow checkpoint, a digest that
            does not match (flipped bytes, an edited file), or content that is not plain
            data.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CorruptCheckpoint(f"cannot read it ({exc.strerror})") from None
    head, sep, payload = data.partition(b"\n")
    if not sep or not head.startswith(_MAGIC):
        raise CorruptCheckpoint("not a quflow checkpoint of this version (missing or damaged "
                                "header)")
    if hashlib.sha256(payload).hexdigest().encode() != head[len(_MAGIC):]:
        raise CorruptCheckpoint("its content does not match its digest (damaged or edited)")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means unusable
        raise CorruptCheckpoint(f"its content cannot be loaded as plain data ({exc})") from None
    if not isinstance(state, dict):
        raise CorruptCheckpoint("its content is not a checkpoint dictionary")
    return state
