"""Object storage (S3, GCS, Azure, MinIO... any fsspec URI) for inputs and outputs.

The one place that knows about URIs: parsing (`is_uri`), the checks made before any work
(`check_readable`, `check_writable`: a bad URI, missing credentials, a missing bucket -> one
`InputError` line, exit 2), listing, "is this output done", fetching to a local file and the
atomic put. fsspec picks the implementation by the scheme (s3fs for ``s3://``, gcsfs for
``gs://``, adlfs for ``az://``), and each reads its credentials from the store's standard
environment and config files (AWS_ACCESS_KEY_ID / AWS_PROFILE / ~/.aws, AWS_ENDPOINT_URL for
MinIO and other S3 endpoints; GOOGLE_APPLICATION_CREDENTIALS; AZURE_STORAGE_*).

Atomic put: the object is uploaded under a hidden temporary key beside the final one
(``.NAME.partial-XXXX.EXT``) and then moved (copy + delete on S3/GCS) to the final key, so a
final name never holds half an object; the temporary key is removed when anything fails.
Local paths never come here: the local code paths are unchanged.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import InputError, SRDeployError
from .text import first_line

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
# Schemes that name a bucket (container) as the first part of the path.
_BUCKETED = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}
_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`",
    "az": "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME and a key",
}
_EXTRA = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}


def is_uri(text: str | Path) -> bool:
    """True for ``scheme://...`` (two letters or more: ``C:\\`` is a path); local paths are False."""
    return isinstance(text, str) and bool(_URI.match(text))


def scheme(uri: str) -> str:
    match = _URI.match(uri)
    return match.group(1).lower() if match else ""


def join(base: str, relative: str) -> str:
    """``s3://b/out`` + ``a/x.png`` -> ``s3://b/out/a/x.png``."""
    return base.rstrip("/") + "/" + relative.lstrip("/")


def parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path without the scheme); InputError for a scheme nothing can read."""
    try:
        import fsspec
    except ImportError:  # fsspec comes with each store's extra (s3fs, gcsfs, adlfs)
        raise _not_installed(uri, "pip install fsspec and its implementation for it") from None
    try:
        # A scheme is case-insensitive (RFC 3986); fsspec's registry knows the lower-case names only.
        fs, path = fsspec.core.url_to_fs(scheme(uri) + uri[uri.index("://") :], use_listings_cache=False)
    except ImportError as exc:  # fsspec's text names what its implementation needs (aiohttp for http://)
        raise _not_installed(uri, first_line(exc)) from None
    except (ValueError, TypeError) as exc:
        raise InputError(f"{uri}: not a storage URI this installation can read ({first_line(exc)})") from None
    if scheme(uri) in _BUCKETED and (not path.strip("/") or path.startswith("/")):  # s3:// or s3:///key
        raise InputError(f"{uri}: no bucket in the URI (expected {scheme(uri)}://BUCKET/path)")
    return fs, path


def _not_installed(uri: str, otherwise: str) -> InputError:
    """``URI: s3:// is not installed: pip install 'sr-deploy[s3]'`` (`otherwise` for a scheme that
    has no extra of ours)."""
    extra = _EXTRA.get(scheme(uri))
    how = f"pip install 'sr-deploy[{extra}]'" if extra else otherwise
    return InputError(f"{uri}: {scheme(uri)}:// is not installed: {how}")


def _explain(uri: str, exc: BaseException) -> InputError:
    """One line for a store that cannot be used: credentials, bucket, endpoint."""
    name = type(exc).__name__
    kind = scheme(uri)
    if "Credential" in name or "NoAuth" in name or isinstance(exc, PermissionError):
        where = _CREDENTIALS.get(kind[:2] if kind.startswith(("s3", "gs", "az")) else kind, "the store's credentials")
        return InputError(f"{uri}: no usable credentials for {kind}:// ({first_line(exc)}): set {where}")
    if isinstance(exc, FileNotFoundError) and kind in _BUCKETED:
        bucket = _filesystem(uri)[1].split("/", 1)[0]
        return InputError(f"{uri}: the bucket {bucket!r} does not exist (or is not visible with these credentials)")
    return InputError(f"{uri}: the store cannot be reached ({name}: {first_line(exc)})")


def _bucket_info(uri: str) -> tuple[Any, str]:
    fs, path = _filesystem(uri)
    if scheme(uri) in _BUCKETED:
        try:
            fs.info(path.split("/", 1)[0])
        except Exception as exc:  # credentials, a missing bucket, an endpoint that does not answer
            raise _explain(uri, exc) from None
    return fs, path


def check_writable(uri: str) -> None:
    """The output's store can be used (credentials, bucket): checked before any work."""
    _bucket_info(uri)


def stat(uri: str) -> dict | None:
    """The object's info (``type`` file/directory, ``size``...), None when nothing is there."""
    fs, path = _filesystem(uri)
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise _explain(uri, exc) from None


def check_readable(uri: str) -> dict:
    """The input's info; InputError (one line) for a bad URI, credentials, bucket, or nothing there."""
    _bucket_info(uri)
    info = stat(uri)
    if info is None:
        raise InputError(f"{uri}: no such object or prefix")
    return info


def list_files(uri: str) -> list[tuple[str, str]]:
    """Every object under the prefix `uri`, sorted: [(its URI, its path relative to `uri`)]."""
    fs, path = _filesystem(uri)
    base = path.rstrip("/")
    try:
        found = sorted(fs.find(base))
    except Exception as exc:
        raise _explain(uri, exc) from None
    prefix = uri.rstrip("/")
    return [(join(prefix, p[len(base) :]), p[len(base) :].lstrip("/")) for p in found if p != base]


def is_done(uri: str) -> bool:
    """An output object counts as done when it exists and is not empty (puts are atomic)."""
    info = stat(uri)
    return info is not None and info.get("type") == "file" and int(info.get("size") or 0) > 0


def read_range(uri: str, start: int, end: int) -> bytes:
    """Bytes `start` to `end` (exclusive) of the object `uri`: one ranged read, not a download."""
    fs, path = _filesystem(uri)
    try:
        return fs.cat_file(path, start=start, end=end)
    except Exception as exc:
        raise _explain(uri, exc) from None


def open_read(uri: str, block_size: int = 1 << 16) -> Any:
    """The object `uri` as a seekable binary file that reads in ranges of `block_size` bytes as it
    is read (for a header: a video container's tags), not a download. Close it after use."""
    fs, path = _filesystem(uri)
    try:
        return fs.open(path, "rb", block_size=block_size)
    except Exception as exc:
        raise _explain(uri, exc) from None


def fetch(uri: str, local: Path) -> Path:
    """Download `uri` to the local file `local` (streamed; its folder is made); returns `local`."""
    fs, path = _filesystem(uri)
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.get_file(path, str(local))
    except FileNotFoundError:
        raise InputError(f"{uri}: no such object") from None
    except Exception as exc:
        raise SRDeployError(f"{uri}: cannot download ({type(exc).__name__}: {first_line(exc)})") from None
    return local


def _stem_and_ext(uri: str) -> tuple[str, str]:
    name = basename(uri)
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if stem else (name, "")


_PARTIAL_TOKEN_BYTES = 4


def partial_key(uri: str) -> str:
    """A hidden temporary key beside `uri`, unique to this writer: ``.NAME.partial-XXXX.EXT``."""
    stem, ext = _stem_and_ext(uri)
    return join(parent(uri), f".{stem}.partial-{secrets.token_hex(_PARTIAL_TOKEN_BYTES)}{ext}")


def _partial_of(name: str) -> tuple[str, str] | None:
    """(stem, ext) of the output whose `partial_key` is the file name `name`, else None."""
    stem, found, rest = name[1:].rpartition(".partial-")
    token, ext = rest[: 2 * _PARTIAL_TOKEN_BYTES], rest[2 * _PARTIAL_TOKEN_BYTES :]
    hex_token = len(token) == 2 * _PARTIAL_TOKEN_BYTES and all(c in "0123456789abcdef" for c in token)
    return (stem, ext) if name.startswith(".") and found and hex_token and ext[:1] in ("", ".") else None


def remove_stale_partials(done: Iterable[str]) -> int:
    """Remove the temporary keys (`partial_key`) left beside outputs that are now complete: a
    writer killed between its upload and its move (a Ray actor killed mid-put, a `kill -9`)
    cannot remove its own. One listing per folder; returns how many were removed."""
    by_folder: dict[str, set[tuple[str, str]]] = {}
    for uri in done:
        by_folder.setdefault(parent(uri), set()).add(_stem_and_ext(uri))
    removed = 0
    for folder, outputs in by_folder.items():
        fs, path = _filesystem(folder)
        try:
            names = [entry.rsplit("/", 1)[-1] for entry in fs.ls(path.rstrip("/"), detail=False, refresh=True)]
        except FileNotFoundError:
            continue
        for name in names:
            if _partial_of(name) in outputs:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(f"{path.rstrip('/')}/{name}")
                    removed += 1
    return removed


# s3fs reads a file below 2 x chunksize (default 50 MiB) whole into memory, and sends a larger one
# in 10 parts at once: with these the memory of an upload is a few MiB, whatever the file's size.
_S3_UPLOAD = {"chunksize": 8 << 20, "max_concurrency": 2}


def put_atomic(local: Path, uri: str) -> str:
    """Upload the local file to `uri` so that `uri` is either absent/old or complete; returns `uri`."""
    fs, path = _filesystem(uri)
    tmp = _filesystem(partial_key(uri))[1]
    try:
        fs.put_file(str(local), tmp, **(_S3_UPLOAD if scheme(uri) in ("s3", "s3a") else {}))
        fs.mv(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            fs.rm_file(tmp)
        if isinstance(exc, Exception):
            raise SRDeployError(f"{uri}: cannot upload ({type(exc).__name__}: {first_line(exc)})") from None
        raise
    return uri


def put_bytes_atomic(data: bytes, uri: str) -> str:
    fs, path = _filesystem(uri)
    tmp = _filesystem(partial_key(uri))[1]
    try:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    finally:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm_file(tmp)
    return uri


def read_json(uri: str) -> Any:
    """The JSON object at `uri`, or None when it is missing or unreadable."""
    fs, path = _filesystem(uri)
    try:
        return json.loads(fs.cat_file(path))
    except Exception:
        return None


def remove_tree(uri: str) -> None:
    """Remove every object under the prefix `uri` (nothing there is fine)."""
    fs, path = _filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path.rstrip("/"), recursive=True)


def identity(info: dict) -> dict:
    """What says an object changed: size and its ETag / generation / modification time."""
    tag = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("md5Hash")
    when = info.get("LastModified") or info.get("mtime") or info.get("updated")
    return {"size": int(info.get("size") or 0), "tag": str(tag or ""), "modified": str(when or "")}


def local_name(uri: str) -> str:
    """A file name for a local copy of `uri` (its last part; the suffix picks decoders)."""
    return basename(uri) or "object"
