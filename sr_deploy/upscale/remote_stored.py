"""The driver's side of a remote run with object storage: rows carry store keys, never bytes.

images    a row names the input (`fetch`: a URI, or a path the workers can read) and, for a
          URI output, the final key (`dest`): the worker fetches, runs the local job and puts
          the output atomically; the answer carries no bytes.
videos    (output in a store) the driver cuts the input into keyframe-aligned pieces one file
          at a time on its disk and puts each under the output's hidden prefix
          ``.NAME.segments/in/`` (so its memory does not grow with the video); a worker
          fetches a piece, upscales it, puts it under ``.NAME.segments/pieces/``; a manifest
          there (the input's size and ETag, the model, every option) lets a re-run send only
          the missing pieces; once all are there the driver fetches them to its disk, muxes
          them with the input's audio (the local run's final step) and puts the output.
          A video from a store to a local OUT is fetched by the driver into the output's stage
          folder (the same on every run, so its pieces resume) and sent as a local run's
          pieces (`RemoteRun`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ..util import storage
from ..video import probe_video
from ..video.mux import write_output
from ..video.pieces import VideoPieces, check_cuttable, piece_name, provenance_tags, split_video, with_input_codec
from ..video.segments import Segment
from .plan import Job, Outcome
from .remote import RemoteRun
from .stored import local_input, stage_dir, sweep_partials

_LAYOUT = 1  # bumped when the stored pieces' layout changes: another layout's manifest is not resumed
_MANIFEST = "manifest.json"


class StoredPieces(VideoPieces):
    """A video whose pieces wait in the store (`prefix` = ``OUT/.NAME.segments``), not on this disk."""

    uri: str = ""
    prefix: str = ""

    @classmethod
    def cut_to_store(cls, source: str, target: str, scratch: Path, seconds: float, settings: dict) -> StoredPieces:
        local = local_input(source, scratch / "source")
        info = probe_video(local)
        check_cuttable(source, info)
        settings = with_input_codec(settings, Path(target).suffix, info.bit_depth)
        prefix = storage.join(storage.parent(target), f".{storage.basename(target)}.segments")
        key = _key(source, local, settings)
        manifest = storage.read_json(storage.join(prefix, f"pieces/{_MANIFEST}"))
        done: dict[int, Segment] = {}
        if manifest and manifest.get("key") == key:
            done = {int(s["file"][6:11]): Segment(**s) for s in manifest["segments"]}
            done = {p: s for p, s in done.items() if storage.is_done(storage.join(prefix, f"pieces/{s.file}"))}
        else:
            storage.remove_tree(prefix)  # another input, model or setting: start again
        self = cls(local, scratch / "out" / storage.local_name(target), scratch / "join", key, done=done)
        self.uri, self.prefix, self.tags = target, prefix, provenance_tags(settings, local)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        for part, (path, packets) in enumerate(split_video(local, scratch / "cut", seconds)):
            if part not in done:  # one piece at a time through this machine's memory
                storage.put_atomic(path, storage.join(prefix, f"in/{piece_name(part)}"))
                self.pending.append((part, path, packets))
            path.unlink()
            self.parts = part + 1
        self.answered = len(done)
        return self

    def row(self, part: int) -> dict[str, str]:
        return {
            "fetch": storage.join(self.prefix, f"in/{piece_name(part)}"),
            "dest": storage.join(self.prefix, f"pieces/{piece_name(part)}"),
        }

    def add(self, part: int, data: bytes, frames: int) -> None:
        """A piece is in the store (the worker put it): recorded in the store's manifest."""
        self.answered += 1
        self.done[part] = Segment(piece_name(part), frames, 0, 0)
        segments = [self.done[p].__dict__ for p in sorted(self.done)]
        manifest = json.dumps({"key": self.key, "segments": segments}, indent=1).encode()
        storage.put_bytes_atomic(manifest, storage.join(self.prefix, f"pieces/{_MANIFEST}"))

    def join(self, log: Any) -> tuple[int, str]:
        """Fetch the pieces in order to this disk, mux them with the input's audio, put the output."""
        segments = [self.done[part] for part in range(self.parts)]
        for segment in segments:
            storage.fetch(storage.join(self.prefix, f"pieces/{segment.file}"), self.folder / segment.file)
        info = probe_video(self.source)
        audio = write_output(self.target, self.source, self.folder, segments, self.target.suffix, info, log, self.tags)
        storage.put_atomic(self.target, self.uri)
        storage.remove_tree(self.prefix)
        shutil.rmtree(self.folder.parent, ignore_errors=True)
        return sum(s.frames for s in segments), audio


def _key(source: str, local: Path, settings: dict) -> dict:
    """What must not change for stored pieces to be resumed: the input object and the settings."""
    if storage.is_uri(source):
        what = storage.identity(storage.stat(source) or {})
    else:
        what = {"size": local.stat().st_size, "modified": local.stat().st_mtime_ns}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"layout": _LAYOUT, "source": source, **what, "settings": digest}


class StoredRemoteRun(RemoteRun):
    """`RemoteRun` for jobs whose `source` / `target` are locations (URIs or paths, as text)."""

    def _image_row(self, job: Job) -> dict[str, Any]:
        source, target = str(job.source), str(job.target)
        fetch = source if storage.is_uri(source) else str(Path(source).resolve())
        return {"data": b"", "packets": 0, "fetch": fetch, "dest": target if storage.is_uri(target) else ""}

    def _lock(self, index: int, job: Job) -> bool:
        """A local output is locked as `RemoteRun` locks it; a store has no locks (its puts are atomic)."""
        return storage.is_uri(str(job.target)) or super()._lock(index, job)

    @staticmethod
    def _piece_row(pieces: VideoPieces, part: int, path: Path) -> dict[str, Any]:
        if isinstance(pieces, StoredPieces):
            return {"data": b"", "fetch": "", "dest": ""} | pieces.row(part)
        return {"fetch": "", "dest": ""} | RemoteRun._piece_row(pieces, part, path)

    @staticmethod
    def _cut(job: Job, scratch: Path, seconds: float, settings: dict) -> VideoPieces:
        source, target = str(job.source), str(job.target)
        if storage.is_uri(target):
            return StoredPieces.cut_to_store(source, target, scratch, seconds, settings)
        # a store's video to a local OUT: its copy lives where every run of this output finds it,
        # so the pieces' resume key (path, size, modification time) holds across runs
        local = local_input(source, stage_dir(target) / "in")
        return VideoPieces.cut(local, Path(target), scratch, seconds, settings)

    def close(self) -> None:
        super().close()
        sweep_partials(self.summary, self.report)

    def finish(self, index: int) -> None:
        super().finish(index)
        job = self.todo[index]
        if storage.is_uri(str(job.source)) and not storage.is_uri(str(job.target)) and job.target in self.summary.done:
            shutil.rmtree(stage_dir(str(job.target)), ignore_errors=True)  # the copy is no longer needed

    def answer(self, index: int, part: int, ok: bool, message: str, code: int, data: bytes, frames: int) -> None:
        job = self.todo[int(index)]
        if job.kind == "image" and bool(ok) and storage.is_uri(str(job.target)):
            self.summary.add(Outcome(job, "done", path=job.target))  # the worker put it
            return None
        return super().answer(index, part, ok, message, code, data, frames)
