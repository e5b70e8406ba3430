"""File I/O that works on local paths and object stores alike (``gs://bucket/dir``).

Every file the toolkit writes or reads goes through ``etils.epath.Path``,
never the builtin ``open``, ``pathlib`` or ``np.save`` to a name, so a work
dir may live in a bucket wherever orbax/tensorstore can also write (a TPU
pod has no shared POSIX disk by default). Local paths get exactly the files
and bytes they got before.
"""

from __future__ import annotations

import io
import os

from etils import epath

PathLike = epath.PathLike


def is_remote(path: PathLike) -> bool:
  """Whether ``path`` names an object store (``gs://``, ``s3://``...) rather than a local file."""
  return "://" in os.fspath(path)


def write_bytes_atomic(path: PathLike, data: bytes) -> epath.Path:
  """Writes ``data`` to ``path`` so that a kill never leaves half a file (creates the parent directory).

  Locally: write a temporary name, then rename over the target. An object
  store (GCS) has no atomic rename (a rename there is copy + delete), but
  its object writes are atomic: readers see the old object or the whole new
  one. So a remote path gets one direct write.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    path.write_bytes(data)
    return path
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)
  return path


def write_text_atomic(path: PathLike, text: str) -> epath.Path:
  """``write_bytes_atomic`` of UTF-8 text."""
  return write_bytes_atomic(path, text.encode("utf-8"))


def append_text(path: PathLike, text: str) -> None:
  """Appends ``text`` to a log file (created when missing).

  Object stores cannot append: there the object is read and written again
  whole (logs are small, and the write is atomic, so a kill keeps the old
  log).
  """
  path = epath.Path(path)
  if is_remote(path):
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(old + text, encoding="utf-8")
    return
  with path.open("a", encoding="utf-8") as f:
    f.write(text)


def save_png(fig, path: PathLike) -> epath.Path:
  """Writes a matplotlib figure as PNG (creating the directory), rendered in memory first."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  return write_bytes_atomic(path, buffer.getvalue())
