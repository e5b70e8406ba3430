"""The tokenizer interface every part of advrm_jax codes against.

Models, samplers and the data layer only ever see a `Tokenizer`: a handful of
ids and an `encode`/`decode` pair. `HFTokenizer` adapts a transformers
tokenizer (from a local checkpoint directory, or an object that another loader
such as the GGUF importer already built) to that interface; the synthetic
world can provide its own class with the same members.

Conventions shared by every implementation:

* `encode` never adds special tokens. Sequence layout (BOS, EOS, padding) is
  decided in one place, `advrm_jax.data.batching`, so that the prompt length
  of a tokenised pair is exactly the length of the encoded prompt.
* `decode` drops padding ids, so a padded row decodes to its real text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Union, runtime_checkable

# A chat message: {"role": "user" | "assistant" | "system", "content": str}.
Message = Mapping[str, str]
# What a prompt may be in a dataset: plain text or a list of chat messages.
Prompt = Union[str, Sequence[Message]]

# Role labels used when a message list is rendered without a chat template.
# They follow the HH-RLHF transcript format, so an HH prompt parsed into
# messages and rendered back gives the original text.
_PLAIN_ROLE_LABELS = {"user": "Human", "assistant": "Assistant"}


@runtime_checkable
class Tokenizer(Protocol):
  """What the rest of the project needs from a tokenizer.

  Attributes:
    vocab_size: Number of token ids, including added special tokens (the
      embedding table must have at least this many rows).
    pad_id: Id used to fill padded positions. Padded positions are always
      masked out, so this may coincide with `eos_id`.
    eos_id: Id appended after every response.
    bos_id: Id of the beginning-of-sequence token, or None if the model has
      none (GPT-2-style and Qwen2 checkpoints do not use one).
    chat_template: The Jinja chat template, or None if the tokenizer has none.
  """

  vocab_size: int
  pad_id: int
  eos_id: int
  bos_id: int | None
  chat_template: str | None

  def encode(self, text: str) -> list[int]:
    """Returns the ids of `text`, with no special tokens added."""
    ...

  def decode(self, ids: Sequence[int]) -> str:
    """Returns the text of `ids`, skipping padding ids."""
    ...


class WordDecoding:
  """`decode` and `decode_response` of a word-level tokenizer whose ids index `vocab` (the worlds' tokenizers).

  A subclass sets `vocab` and the `Tokenizer` ids (`vocab_size`, `pad_id`, `eos_id`, `bos_id`).
  """

  vocab: Sequence[str]
  vocab_size: int
  pad_id: int
  eos_id: int
  bos_id: int | None

  def decode(self, ids: Sequence[int]) -> str:
    """Returns the words of `ids` joined by spaces, skipping padding ids.

    Raises:
      ValueError: If an id is outside [0, vocab_size).
    """
    vocab, pad_id, vocab_size = self.vocab, self.pad_id, self.vocab_size  # locals: a hot loop when decoding samples
    words = []
    for i in ids:
      i = int(i)
      if i == pad_id:
        continue
      if not 0 <= i < vocab_size:
        raise ValueError(f"token id {i} outside the vocabulary [0, {vocab_size})")
      words.append(vocab[i])
    return " ".join(words)

  def decode_response(self, ids: Sequence[int]) -> str:
    """Decodes a sampled response: stops at the first EOS, drops padding/BOS.

    Use this to turn policy samples into preference-record text (the
    batching layer appends EOS again when the record is tokenised).
    """
    eos_id, dropped = self.eos_id, (self.pad_id, self.bos_id)
    kept = []
    for i in ids:
      i = int(i)
      if i == eos_id:
        break
      if i not in dropped:
        kept.append(i)
    return self.decode(kept)


class HFTokenizer:
  """A transformers tokenizer behind the `Tokenizer` interface.

  If the wrapped tokenizer has no pad token (GPT-2, Llama and many other base
  checkpoints ship without one), `pad_id` is the EOS id. That is safe because
  padded positions are always masked, but it means `decode` also drops EOS
  tokens for such tokenizers. The wrapped object is never modified.
  """

  def __init__(self, hf_tokenizer: Any):
    """Wraps an existing tokenizer.

    Args:
      hf_tokenizer: A `transformers.PreTrainedTokenizerBase` (typed loosely so
        importing this module does not import transformers).

    Raises:
      ValueError: If the tokenizer has no EOS token: every sequence the
        project builds ends with one.
    """
    eos_id = hf_tokenizer.eos_token_id
    if eos_id is None:
      raise ValueError(
        f"{type(hf_tokenizer).__name__} has no eos token; advrm_jax appends "
        "EOS to every response, so set tokenizer.eos_token first."
      )
    self._hf = hf_tokenizer
    self.eos_id: int = int(eos_id)
    pad_id = hf_tokenizer.pad_token_id
    # No pad token: reuse EOS (see class docstring).
    self.pad_id: int = self.eos_id if pad_id is None else int(pad_id)
    bos_id = hf_tokenizer.bos_token_id
    self.bos_id: int | None = None if bos_id is None else int(bos_id)
    # len() counts added tokens; `.vocab_size` of a transformers tokenizer
    # counts only the base vocabulary and would be too small for the
    # embedding table when special tokens were added.
    self.vocab_size: int = len(hf_tokenizer)
    self.chat_template: str | None = getattr(hf_tokenizer, "chat_template", None)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike[str]) -> HFTokenizer:
    """Loads the tokenizer saved in a local checkpoint directory.

    Only local files are read (`local_files_only=True`): this project never
    downloads at run time, so a missing directory fails fast instead of
    trying the hub.

    Args:
      path: A directory with `tokenizer.json` / `tokenizer_config.json` (and
        optionally `chat_template.jinja`), as written by `save_pretrained`.

    Returns:
      The wrapped tokenizer.
    """
    # Imported here: transformers is slow to import and only this
    # constructor needs it.
    import transformers  # pylint: disable=g-import-not-at-top  # deferred: slow to import (pulls in torch)

    # trust_remote_code=False, explicitly: left unset, transformers asks
    # interactively whether to run a checkpoint's custom tokenizer code
    # (auto_map); a path must never lead to running code.
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(
      os.fspath(path), local_files_only=True, trust_remote_code=False
    )
    return cls(hf_tokenizer)

  @property
  def hf_tokenizer(self) -> Any:
    """The wrapped transformers tokenizer."""
    return self._hf

  def encode(self, text: str) -> list[int]:
    """Returns the ids of `text` without BOS/EOS or other added tokens."""
    return list(self._hf.encode(text, add_special_tokens=False))

  def decode(self, ids: Sequence[int]) -> str:
    """Returns the text of `ids` with padding ids removed.

    Other special tokens are kept, so a decoded sequence shows where EOS and
    chat-template markers are (unless pad_id == eos_id, see the class
    docstring).

    Args:
      ids: Token ids; a list, tuple or 1-D numpy / jax array.
    """
    kept = [int(i) for i in ids if int(i) != self.pad_id]
    return self._hf.decode(kept, skip_special_tokens=False)

  def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """Renders chat messages with the tokenizer's template.

    Args:
      messages: [{"role": ..., "content": ...}, ...].
      add_generation_prompt: Append the header that opens an assistant turn,
        so the model's continuation is the assistant's reply.

    Returns:
      The rendered text (not tokenised).

    Raises:
      ValueError: If the tokenizer has no chat template.
    """
    if self.chat_template is None:
      raise ValueError("this tokenizer has no chat template; pass use_chat_template=False or set one on the checkpoint")
    return self._hf.apply_chat_template(
      [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )

  def __repr__(self) -> str:
    return (
      f"HFTokenizer({type(self._hf).__name__}, vocab_size="
      f"{self.vocab_size}, pad_id={self.pad_id}, eos_id={self.eos_id}, "
      f"bos_id={self.bos_id}, chat_template="
      f"{'yes' if self.chat_template else 'no'})"
    )


def render_plain_dialogue(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
  """Renders messages as an HH-RLHF style transcript, without a template.

  `[{"role": "user", "content": "Hi"}]` becomes
  `"\\n\\nHuman: Hi\\n\\nAssistant:"`. A system message is written first,
  unlabelled. Used when a dataset has chat messages but the model has no chat
  template (or the caller asked not to use it).

  Args:
    messages: Chat messages.
    add_generation_prompt: End with "\\n\\nAssistant:" for the reply.

  Returns:
    The transcript text.
  """
  parts = []
  for message in messages:
    role, content = message["role"], message["content"]
    if role == "system":
      parts.append(content)
    else:
      label = _PLAIN_ROLE_LABELS.get(role, role.capitalize())
      parts.append(f"\n\n{label}: {content}")
  if add_generation_prompt:
    parts.append("\n\nAssistant:")
  return "".join(parts)


def format_prompt(tokenizer: Tokenizer, prompt: Prompt, use_chat_template: bool) -> str:
  """Turns a dataset prompt into the exact text the model is conditioned on.

  Args:
    tokenizer: Supplies the chat template when `use_chat_template` is set.
    prompt: A string or a list of {"role", "content"} messages.
    use_chat_template: If True, render with the tokenizer's chat template and
      a generation prompt; a plain string prompt counts as one user message.
      If False, a string is used as is and messages are rendered as an
      HH-style transcript (`render_plain_dialogue`).

  Returns:
    The prompt text; tokenise it with `tokenizer.encode`.

  Raises:
    ValueError: If a chat template is requested but the tokenizer has none,
      or `prompt` is neither a string nor a list of messages.
  """
  if isinstance(prompt, str):
    messages = [{"role": "user", "content": prompt}]
  elif isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
    messages = [dict(m) for m in prompt]
  else:
    raise ValueError(f"prompt must be a string or a list of messages, got {type(prompt).__name__}")
  if not use_chat_template:
    return prompt if isinstance(prompt, str) else render_plain_dialogue(messages)
  apply = getattr(tokenizer, "apply_chat_template", None)
  if tokenizer.chat_template is None or apply is None:
    raise ValueError(f"use_chat_template=True but {tokenizer!r} has no chat template")
  return apply(messages, add_generation_prompt=True)
