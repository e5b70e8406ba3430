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


class AppendedText:
  """A log file written by appending rows (metrics.jsonl, samples.jsonl), created when missing.

  Locally each ``append`` goes straight to the file. An object store cannot
  append, and rewriting the whole object at every row costs O(rows^2) bytes
  over a run; so there the log's text is kept in memory (read once) and
  ``flush`` writes it in one object write (atomic: a kill keeps the previous
  object). The training loop flushes just before each checkpoint save and at
  the end of a stage (also on an error or SIGTERM), so a hard kill (SIGKILL,
  a lost VM) loses only the rows logged after the last checkpoint -- the rows
  a resumed run drops from a local log anyway (``MetricWriter.truncate_after``)
  and logs again: the resumed log equals the local one.
  """

  def __init__(self, path: PathLike):
    self.path = epath.Path(path)
    self._remote = is_remote(self.path)
    self._text: str | None = None  # remote only: the whole log, flushed or not (None: not read yet)
    self._dirty = False

  def read(self) -> str:
    """The log's text, rows not flushed yet included ("" when there is none)."""
    if self._remote and self._text is not None:
      return self._text
    text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
    if self._remote:
      self._text = text
    return text

  def append(self, text: str) -> None:
    if self._remote:
      self._text = self.read() + text
      self._dirty = True
      return
    with self.path.open("a", encoding="utf-8") as f:
      f.write(text)

  def rewrite(self, text: str) -> None:
    """Replaces the whole log at once (an atomic write: a kill during it keeps the old log whole)."""
    write_text_atomic(self.path, text)
    if self._remote:
      self._text, self._dirty = text, False

  def flush(self) -> None:
    """Writes the rows appended since the last flush (remote: one object write; locally they already are)."""
    if self._dirty:
      self.path.write_text(self._text, encoding="utf-8")
      self._dirty = False


def save_png(fig, path: PathLike) -> epath.Path:
  """Writes a matplotlib figure as PNG (creating the directory), rendered in memory first."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  return write_bytes_atomic(path, buffer.getvalue())
