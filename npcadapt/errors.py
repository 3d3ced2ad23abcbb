"""The project's exception hierarchy: every error a caller can see names its problem.

All errors derive from :class:`NpcAdaptError`, so a game server can catch one type.
Errors caused by the caller's input also derive from :class:`ValueError`.
"""

from __future__ import annotations

from typing import Any


class NpcAdaptError(Exception):
    """Base class of every error npcadapt raises on purpose."""


class InvalidInputError(NpcAdaptError, ValueError):
    """The caller passed something malformed (shape, type, NaN, bad mask, ...)."""


class PlayerIdError(InvalidInputError):
    """A player id that is empty, too long, or not encodable as UTF-8."""


class ArchetypeError(NpcAdaptError):
    """An archetype definition is missing, malformed or unknown."""


class AdapterMismatchError(NpcAdaptError):
    """An adapter does not fit its archetype (base hash, rank, shapes)."""


class StoreError(NpcAdaptError):
    """The adapter store could not read or write (disk full, permissions, ...)."""


class CorruptAdapterError(StoreError):
    """An adapter file failed validation; it has been moved to quarantine."""


class StoreUnavailableError(StoreError):
    """A shared adapter store (Redis) cannot be reached now; the call may succeed later."""


class StaleAdapterError(StoreError):
    """A write refused by compare-and-set: the store holds this player's adapter at
    `stored_version`, not older than the version written (another server's is newer)."""

    def __init__(self, message: str, stored_version: int):
        super().__init__(message)
        self.stored_version = stored_version


class LogError(NpcAdaptError):
    """The interaction log could not be written or read."""


class LogCorruptionError(LogError):
    """A record in the middle of a log segment failed its checksum."""


class ProtocolError(NpcAdaptError):
    """Bytes on a bridge connection that are not valid MessagePack-RPC."""

    # Set by RpcConnection.receive_data before it raises: the npcadapt.protocol events
    # decoded earlier in that call (Any: this bottom layer cannot import their type).
    events: list[Any]


class ConnectionLostError(NpcAdaptError, ConnectionError):
    """The connection to a bridge server dropped (or could not be re-opened). Calls in flight
    may or may not have run; the client reconnects on its next call."""


class RemoteError(NpcAdaptError):
    """A bridge server answered a call with an error ``[code, message]`` (see docs/protocol.md)."""

    retryable = False  # whether the same call may succeed if sent again later, unchanged

    def __init__(self, code: int, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class OverloadedError(RemoteError):
    """OVERLOADED (code 6): the server refused the call at once to shed load and did nothing;
    send it again later (back off)."""

    retryable = True


class TrainerProcessError(NpcAdaptError):
    """The online trainer's child process failed, refused its set-up or died."""


class TrainerRefusedError(TrainerProcessError):
    """The trainer process answered a request with an error (the channel is still in step)."""


class MissingPackageError(NpcAdaptError):
    """A client's toolchain is not installed; `package` is the Debian package that brings it."""

    def __init__(self, package: str, what: str):
        super().__init__(f"needs Debian package {package} ({what} is missing)")
        self.package, self.what = package, what


class DriverError(NpcAdaptError):
    """A client conformance driver died, printed something that is not an answer, or took too long."""


class BenchmarkError(NpcAdaptError):
    """A benchmark could not run what it measures (a server that did not start, a client
    that did not build, a fault it could not inject)."""
