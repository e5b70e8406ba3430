"""Typed, frozen config nodes: one ``from_node`` turns an ml_collections node into a frozen dataclass.

Every node is checked the same way: a key the dataclass does not have is an
error naming the key's path from the config root, with the known keys and a
close match (``config.attack.lamda: unknown key; known: lam, penalty, ...;
did you mean 'lam'?``), so a typo in a config file or an override never falls
back to a default. A field without a default is required; a field whose type
is itself such a dataclass (or such a dataclass ``| None``) is built from the
sub-node, with its own path.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A config value that cannot work, named by its key."""


def check_keys(keys: Iterable[str], known: Iterable[str], where: str) -> None:
  """Raises ConfigError if ``keys`` holds a key not in ``known``; ``where`` is the node's path (``config.rm``)."""
  known = sorted(known)
  unknown = sorted(set(keys) - set(known))
  if not unknown:
    return
  hints = []
  for key in unknown:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
      hints.append(f"did you mean {close[0]!r} for {key!r}?" if len(unknown) > 1 else f"did you mean {close[0]!r}?")
  paths = ", ".join(f"{where}.{key}" for key in unknown)
  noun = "unknown key" if len(unknown) == 1 else "unknown keys"
  if not known:
    raise ConfigError(f"{paths}: {noun} ({where} holds no keys)")
  raise ConfigError(f"{paths}: {noun}; known: {', '.join(known)}" + (f"; {' '.join(hints)}" if hints else ""))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
  """Field name -> its resolved type annotation (the dataclasses' modules use postponed annotations)."""
  return typing.get_type_hints(cls)


def _node_class(field_type: Any) -> type | None:
  """The dataclass a field of type ``X`` or ``X | None`` is built from (None: the field holds a plain value)."""
  if dataclasses.is_dataclass(field_type):
    return field_type
  args = typing.get_args(field_type)
  if len(args) == 2 and type(None) in args:
    inner = args[0] if args[1] is type(None) else args[1]
    if dataclasses.is_dataclass(inner):
      return inner
  return None


def _plain(value: Any) -> Any:
  """Lists as tuples, so a frozen node holds only hashable values (config overrides and JSON give lists)."""
  return tuple(value) if isinstance(value, list) else value


def from_node(cls: type[T], node: Mapping[str, Any] | T | None, where: str, **overrides: Any) -> T:
  """``cls`` (a frozen dataclass) from a config node, a plain mapping, or an instance (returned as it is).

  Args:
    cls: the dataclass.
    node: the config node (``None``: an empty one, every field its default).
    where: the node's path from the config root, for errors (``config.attack.rl``).
    **overrides: fields set by the caller, after the node's (e.g. a stage's ``total_steps``).

  Raises:
    ConfigError: a key ``cls`` does not have, or a field without a default that the node lacks.
  """
  if isinstance(node, cls):
    return dataclasses.replace(node, **overrides) if overrides else node
  values = dict(node) if node is not None else {}
  fields = {f.name: f for f in dataclasses.fields(cls)}
  check_keys(values, fields, where)
  missing = sorted(
    name
    for name, f in fields.items()
    if name not in values
    and name not in overrides
    and f.default is dataclasses.MISSING
    and f.default_factory is dataclasses.MISSING
  )
  if missing:
    raise ConfigError(f"{', '.join(f'{where}.{name}' for name in missing)}: required key(s) missing")
  types = _field_types(cls)
  for name, value in values.items():
    node_class = _node_class(types[name])
    if node_class is not None and value is not None and not isinstance(value, node_class):
      values[name] = from_node(node_class, value, f"{where}.{name}")
    else:
      values[name] = _plain(value)
  values.update(overrides)
  return cls(**values)
