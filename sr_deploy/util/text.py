"""Text for one-line messages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

__all__ = [
    "PROVENANCE_KEY",
    "first_line",
    "provenance",
    "provenance_fields",
    "same_model",
    "shown",
]

# The PNG text field and the video container tag (`comment`) that say how an output was made.
PROVENANCE_KEY = "sr-deploy"

_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException | str, limit: int = 240) -> str:
    """The first line of an exception's message (ANSI colours removed, cut to `limit`), or the
    exception's type name when it has no message: what a one-line error shows of a cause."""
    text = _ANSI_COLOUR.sub("", str(exc)).strip()
    line = text.splitlines()[0] if text else (type(exc).__name__ if isinstance(exc, BaseException) else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def pixels_text(count: int) -> str:
    """``12.4 Mpx``, or ``4992 pixels`` below 0.1 Mpx (a bound of "0.0 Mpx" says nothing)."""
    return f"{count / 1e6:.1f} Mpx" if count >= 100_000 else f"{count} pixels"


def shown(value: object) -> str:
    """`value` as text for one line of output: control characters (a newline or a tab inside a
    file name, an escape sequence) written as Python escapes (``\\n``, ``\\x1b``), so that a
    name cannot break a line that scripts read or paint the terminal; everything else as is."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


def provenance(
    model_id: str, precision: str, settings: Mapping[str, object] | None = None, input_bytes: int | None = None
) -> str:
    """What an output says about how it was made (PNG text field `PROVENANCE_KEY`, a JPEG comment,
    a video's ``comment`` tag): the model (file name and sha256 prefix), the precision the job ran
    in, the `settings` that decide the output (`upscale.options.UpscaleOptions.recorded`) and the
    input's size, each value percent-encoded where it holds a space, a ``%`` or a character that is
    not printable (so that every field stays one word), e.g.
    ``model=default.pt:1a2b3c4d5e6f7a8b precision=fp32 outscale=model quality=95 input_bytes=52311``."""
    job = dict(settings or {}) | ({"input_bytes": input_bytes} if input_bytes is not None else {})
    fields = "".join(f" {key}={quote(str(value), safe=_SAFE)}" for key, value in job.items())
    return f"model={model_id} precision={precision}{fields}"


_SAFE = "".join(chr(c) for c in range(33, 127) if chr(c) != "%")  # printable ASCII but % stays as it is
# DOTALL: a model's file name may hold a newline. The job's fields are read loosely (any key, an
# empty value): a field a later version adds must not make the whole record unreadable.
_PROVENANCE = re.compile(r"model=(.+) precision=(\S+)((?: [^\s=]+=\S*)*)", re.DOTALL)
_CONTENT_HASH = re.compile(r":([0-9a-f]{16})")


def provenance_fields(text: str | None) -> dict[str, str] | None:
    """A `provenance` text read back: ``{"model": ..., "precision": ..., **job fields}`` (values
    decoded); None when `text` is not one (missing, or written by something else). Records written
    before the job's fields were recorded give only the model and the precision."""
    found = _PROVENANCE.fullmatch(text.strip()) if text else None
    if not found:
        return None
    fields = dict(field.split("=", 1) for field in found.group(3).split())
    return {"model": found.group(1), "precision": found.group(2)} | {k: unquote(v) for k, v in fields.items()}


def same_model(recorded: str, model_id: str) -> bool:
    """Whether the model id an output records (`provenance_fields`) may name the model `model_id`:
    by the sha256 prefix of its bytes when both carry one (a renamed copy of the same file makes
    the same bytes); by the whole id when neither does (a file name outside Latin-1 is stored with
    ``?`` in a PNG text field, as UTF-8 in a video tag); True when only one does (a library call
    that named its model without hashing it: nothing to tell them apart by)."""
    ours, theirs = _CONTENT_HASH.search(model_id[-17:]), _CONTENT_HASH.search(recorded[-17:])
    if ours and theirs:
        return ours.group(1) == theirs.group(1)
    if ours or theirs:
        return True
    return recorded in (model_id, model_id.encode("latin-1", "replace").decode("latin-1"))
