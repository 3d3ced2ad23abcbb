"""Per-player adapter files: naming, durable atomic writes, validation and quarantine.

Layout under ``root``::

    adapters/<archetype>/<key[:2]>/<key>.safetensors      key = sha256(player id, UTF-8)
    quarantine/<archetype>/<key>.<unix_ns>.safetensors    files that failed validation
    quarantine/<archetype>/<key>.<unix_ns>.reason.txt     why, for whom, from where

A file name never contains the player id itself, so any id (slashes, ``..``, NUL, look-alike
Unicode, case variants) maps to its own file inside ``adapters/``. Writes go to a unique temp
file, are fsynced, then ``os.replace``-d over the old file and the directory is fsynced: a
crash or an OS error at any step leaves the previous version intact. A file that fails
validation on load is moved to quarantine, so the next load serves the base policy.

It is the default :class:`~npcadapt.stores.Store`, for one server: nothing else writes
it, so it has no change to announce (``watch`` does nothing) and no compare-and-set.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn, TypeVar

import safetensors.torch
import torch

from npcadapt.adapter_meta import (
    DTYPES,
    AdapterMeta,
    AdapterSpec,
    player_key,
    show_id,
    validate_archetype_name,
)
from npcadapt.errors import (
    AdapterMismatchError,
    CorruptAdapterError,
    InvalidInputError,
    StoreError,
)
from npcadapt.fileio import fsync_dir, write_new_durably

if TYPE_CHECKING:
    from npcadapt.stores import StoreEvent

__all__ = ["AdapterStore"]

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

_SUFFIX = ".safetensors"
_TMP_SUFFIX = ".tmp"
_MAX_HEADER_BYTES = 1 << 20  # our headers are ~1 KB; refuse absurd lengths before reading
_N_LOCKS = 64
_BAD_FILE_ERRNOS = frozenset({errno.EIO, errno.EISDIR})  # errnos that mean "this file is bad"
_OS_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EIO: "I/O error",
}


def _os_reason(exc: OSError) -> str:
    """'disk full [ENOSPC]'-style text for an OSError."""
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{_OS_REASONS.get(exc.errno or 0) or exc.strerror or exc} [{name}]"


class _Invalid(Exception):
    """Internal: a file failed validation; the message is the reason."""


def _header_metadata(header: bytes) -> dict[str, str]:
    """The ``__metadata__`` dict of a safetensors JSON header."""
    try:
        parsed = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Invalid(f"header is not valid JSON: {exc}") from None
    md = parsed.get("__metadata__", {}) if isinstance(parsed, dict) else None
    if not isinstance(md, dict):
        raise _Invalid("header '__metadata__' is not a JSON object")
    return md


def _meta_for(md: Mapping[str, str], archetype: str, player: str) -> AdapterMeta:
    """Parse metadata and check it belongs to (archetype, player)."""
    try:
        meta = AdapterMeta.from_metadata(md)
    except ValueError as exc:
        raise _Invalid(f"bad metadata: {exc}") from None
    if meta.archetype != archetype:
        raise _Invalid(f"metadata archetype is {meta.archetype!r}, expected {archetype!r}")
    if meta.player != player:
        raise _Invalid(
            f"metadata names player {show_id(meta.player)}, not {show_id(player)} (file swapped or misnamed)"
        )
    return meta


def _validate(data: bytes, spec: AdapterSpec, player: str) -> tuple[dict[str, torch.Tensor], AdapterMeta]:
    """Check a whole file's bytes against ``spec``; raise _Invalid with the reason."""
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # SafetensorError, or KeyError for a dtype torch lacks
        raise _Invalid(f"not a valid safetensors file ({len(data)} bytes): {exc!r}") from None
    n_header = int.from_bytes(data[:8], "little")
    meta = _meta_for(_header_metadata(data[8 : 8 + n_header]), spec.archetype, player)
    missing = sorted(spec.shapes.keys() - tensors.keys())
    extra = sorted(tensors.keys() - spec.shapes.keys())
    if missing:
        raise _Invalid(f"tensor(s) {missing} missing")
    if extra:
        raise _Invalid(f"unexpected tensor(s) {extra}")
    for name in sorted(tensors):
        if tuple(tensors[name].shape) != spec.shapes[name]:
            raise _Invalid(f"tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {spec.shapes[name]}")
    want = DTYPES[meta.dtype]
    for name in sorted(tensors):
        if tensors[name].dtype != want:
            raise _Invalid(f"tensor {name!r} has dtype {tensors[name].dtype}, metadata says {meta.dtype}")
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])  # one check, not one per tensor
    if not bool(torch.isfinite(flat).all()):
        bad = [name for name in sorted(tensors) if not bool(torch.isfinite(tensors[name]).all())]
        raise _Invalid(f"tensor(s) {bad} have non-finite values")
    if meta.rank != spec.rank:
        raise _Invalid(f"metadata rank is {meta.rank}, archetype {spec.archetype!r} uses rank {spec.rank}")
    return tensors, meta


def _serialize(tensors: Mapping[str, torch.Tensor], meta: AdapterMeta) -> bytes:
    """Contiguous CPU copies (same dtype) -> safetensors bytes; InvalidInputError if unfit."""
    if not isinstance(tensors, Mapping) or not tensors:
        raise InvalidInputError(
            f"adapter for player {show_id(meta.player)}: tensors must be a "
            f"non-empty mapping, got {type(tensors).__name__}"
        )
    want = DTYPES[meta.dtype]
    prepared: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        where = f"tensor {name!r} of player {show_id(meta.player)}"
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"{where}: expected str -> torch.Tensor, got {type(t).__name__}")
        if t.dtype != want:
            raise InvalidInputError(f"{where} has dtype {t.dtype}, meta.dtype is {meta.dtype!r}")
        t = t.detach().to("cpu").contiguous()
        if not bool(torch.isfinite(t).all()):
            raise InvalidInputError(f"{where} has non-finite values; refusing to store it")
        prepared[name] = t
    try:
        return safetensors.torch.save(prepared, metadata=meta.to_metadata())
    except (ValueError, RuntimeError) as exc:  # e.g. two names sharing memory
        raise InvalidInputError(f"adapter for player {show_id(meta.player)}: {exc}") from None


def _reason_text(player: str, key: str, where: str, reason: str) -> str:
    """The note kept beside quarantined data: why, for whom, from where."""
    return f"player: {player!r}\nkey: {key}\nfile: {where}\ntime: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\nreason: {reason}\n"


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.error("could not remove temp file %s: %s", path, _os_reason(exc))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # exists, owned by another user
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    return True


class AdapterStore:
    """Durable per-player adapter files under one root directory (thread-safe)."""

    shared = False  # one server writes it

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            for sub in ("adapters", "quarantine"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create adapter store at {self.root}: {_os_reason(exc)}") from exc
        self._locks = tuple(threading.Lock() for _ in range(_N_LOCKS))  # striped by player key
        self._known_dirs: set[Path] = {self.root / "adapters", self.root / "quarantine"}
        self._remove_stale_temps()

    def path_for(self, archetype: str, player: str) -> Path:
        """Where (archetype, player)'s adapter lives; validates both names."""
        key = player_key(player)
        archetype = validate_archetype_name(archetype)
        return self.root / "adapters" / archetype / key[:2] / (key + _SUFFIX)

    def save(self, tensors: Mapping[str, torch.Tensor], meta: AdapterMeta) -> Path:
        """Atomically replace the player's adapter file with ``tensors`` + ``meta``."""
        if not isinstance(meta, AdapterMeta):
            raise InvalidInputError(f"meta must be an AdapterMeta, got {type(meta).__name__}")
        path = self.path_for(meta.archetype, meta.player)
        data = _serialize(tensors, meta)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
        try:
            self._ensure_dir(path.parent)
            write_new_durably(tmp, data)
            with self._lock_for(path):
                os.replace(tmp, path)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise StoreError(
                f"could not save adapter for player {show_id(meta.player)} to {path}: "
                f"{_os_reason(exc)}; the previous version is unchanged"
            ) from exc
        except BaseException:
            _unlink_quietly(tmp)
            raise
        try:
            fsync_dir(path.parent)
        except OSError as exc:
            raise StoreError(
                f"saved adapter for player {show_id(meta.player)} to {path} but could not fsync "
                f"its directory: {_os_reason(exc)}; it may not survive a power loss"
            ) from exc
        return path

    def load(self, spec: AdapterSpec, player: str) -> tuple[dict[str, torch.Tensor], AdapterMeta] | None:
        """The player's validated adapter, or None if there is none (serve the base policy)."""
        if not isinstance(spec, AdapterSpec):
            raise InvalidInputError(f"spec must be an AdapterSpec, got {type(spec).__name__}")
        path = self.path_for(spec.archetype, player)
        loaded = self._read_checked(
            spec.archetype, player, path, "adapter", lambda f, size: _validate(f.read(), spec, player)
        )
        if loaded is None:
            return None
        tensors, meta = loaded
        if meta.base_hash != spec.base_hash:
            raise AdapterMismatchError(
                f"adapter for player {show_id(player)} ({path}) was trained against base "
                f"{meta.base_hash}, archetype {spec.archetype!r} is at {spec.base_hash}"
            )
        return tensors, meta

    def read_meta(self, archetype: str, player: str) -> AdapterMeta | None:
        """The player's adapter metadata from the file header only; None if absent."""
        path = self.path_for(archetype, player)
        return self._read_checked(
            archetype,
            player,
            path,
            "adapter header",
            lambda f, size: _meta_for(_read_header(f, size), archetype, player),
        )

    def _read_checked(
        self, archetype: str, player: str, path: Path, what: str, parse: Callable[[BinaryIO, int], _T]
    ) -> _T | None:
        """Run `parse(file, size)` on the player's file: None if absent; a bad file is
        quarantined (CorruptAdapterError); an environment error raises StoreError."""
        ident = None
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                return parse(f, st.st_size)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in _BAD_FILE_ERRNOS:
                raise StoreError(
                    f"could not read {what} for player {show_id(player)} from {path}: {_os_reason(exc)}"
                ) from exc
            self._quarantine(archetype, player, path, ident, f"unreadable: {_os_reason(exc)}")
        except _Invalid as exc:
            self._quarantine(archetype, player, path, ident, str(exc))

    def delete(self, archetype: str, player: str) -> bool:
        """Remove the player's adapter; True if a file was removed."""
        path = self.path_for(archetype, player)
        try:
            with self._lock_for(path):
                os.unlink(path)
            fsync_dir(path.parent)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(
                f"could not delete adapter for player {show_id(player)} at {path}: {_os_reason(exc)}"
            ) from exc
        return True

    def version_floor(self, archetype: str, player: str) -> int:
        """0: one server writes the files, so a reset player starts again at version 1."""
        self.path_for(archetype, player)  # validates both names
        return 0

    def players(self, archetype: str) -> Iterator[str]:
        """Player ids (from metadata) of stored adapters; unreadable files are skipped."""
        base = self.root / "adapters" / validate_archetype_name(archetype)
        for path in sorted(base.glob(f"??/*{_SUFFIX}")):
            try:
                with open(path, "rb") as f:
                    meta = AdapterMeta.from_metadata(_read_header(f, os.fstat(f.fileno()).st_size))
            except FileNotFoundError:
                continue  # deleted or quarantined meanwhile
            except (OSError, ValueError, _Invalid) as exc:
                reason = _os_reason(exc) if isinstance(exc, OSError) else str(exc)
                logger.warning("skipping unreadable adapter file %s: %s", path, reason)
                continue
            if meta.archetype != archetype or player_key(meta.player) != path.stem:
                logger.warning(
                    "skipping %s: it holds archetype %r player %s, which belongs elsewhere",
                    path,
                    meta.archetype,
                    show_id(meta.player),
                )
                continue
            yield meta.player

    def exists(self, archetype: str, player: str) -> bool:
        """Whether the player's adapter file exists (not validated)."""
        return self.path_for(archetype, player).exists()

    def watch(self, callback: Callable[[StoreEvent], None]) -> None:
        """Nothing to watch: no other process writes these files."""

    def stats(self) -> dict[str, object]:
        return {"store_backend": "file", "store_reachable": True}

    def close(self) -> None:
        """Nothing to release."""

    def quarantined(self, archetype: str) -> list[Path]:
        """Quarantined adapter files of ``archetype``, oldest name first."""
        qdir = self.root / "quarantine" / validate_archetype_name(archetype)
        return sorted(qdir.glob(f"*{_SUFFIX}"))

    # -- internals ---------------------------------------------------------------------

    def _lock_for(self, path: Path) -> threading.Lock:
        return self._locks[int(path.stem[:8], 16) % _N_LOCKS]

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` and missing parents, fsyncing each new entry's parent."""
        if directory in self._known_dirs:
            return
        missing = []
        d = directory
        while d not in self._known_dirs and not d.is_dir():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            fsync_dir(d.parent)
        self._known_dirs.add(directory)

    def _quarantine(
        self, archetype: str, player: str, path: Path, ident: tuple[int, int] | None, reason: str
    ) -> NoReturn:
        """Move a bad file aside with a reason note, then raise CorruptAdapterError."""
        key, qdir = path.stem, self.root / "quarantine" / archetype
        what = f"adapter for player {show_id(player)} in {path} failed validation: {reason}"
        try:
            self._ensure_dir(qdir)
            with self._lock_for(path):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    st = None
                if st is None or (ident is not None and (st.st_dev, st.st_ino) != ident):
                    raise CorruptAdapterError(
                        f"{what}; the file was replaced or removed meanwhile, so nothing was quarantined"
                    )
                target = self._write_reason(qdir, key, player, path, reason)
                try:
                    os.replace(path, target)
                except OSError:
                    _unlink_quietly(target.with_name(target.stem + ".reason.txt"))
                    raise
            fsync_dir(qdir)
            fsync_dir(path.parent)
        except OSError as exc:
            logger.error("could not quarantine %s: %s", path, _os_reason(exc))
            raise CorruptAdapterError(f"{what}; moving it to quarantine failed: {_os_reason(exc)}") from exc
        logger.warning("quarantined %s -> %s: %s", path, target, reason)
        raise CorruptAdapterError(f"{what}; moved to {target}")

    @staticmethod
    def _write_reason(qdir: Path, key: str, player: str, path: Path, reason: str) -> Path:
        """Write <key>.<ns>.reason.txt (unique ns); return the matching .safetensors target."""
        text = _reason_text(player, key, str(path), reason).encode()
        ns = time.time_ns()
        while True:
            try:
                write_new_durably(qdir / f"{key}.{ns}.reason.txt", text)
                return qdir / f"{key}.{ns}{_SUFFIX}"
            except FileExistsError:
                ns += 1

    def _remove_stale_temps(self) -> None:
        """Delete temp files of crashed writers (any *.tmp not owned by a live process)."""
        removed = 0
        for tmp in (self.root / "adapters").rglob(f"*{_TMP_SUFFIX}"):
            parts = tmp.name.split(".")  # ['', key, pid, uuid, 'tmp'] for our own names
            pid = int(parts[2]) if len(parts) == 5 and parts[2].isdigit() else None
            if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
                continue
            _unlink_quietly(tmp)
            removed += 1
        if removed:
            logger.info("removed %d stale temp file(s) under %s", removed, self.root / "adapters")


def _read_header(f: BinaryIO, size: int) -> dict[str, str]:
    """Read only the safetensors header from an open file; return its metadata."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise _Invalid(f"file is {size} bytes, too short for a safetensors header")
    n = int.from_bytes(prefix, "little")
    if n > min(_MAX_HEADER_BYTES, size - 8):
        raise _Invalid(f"header length {n} does not fit in a {size}-byte file")
    return _header_metadata(f.read(n))
