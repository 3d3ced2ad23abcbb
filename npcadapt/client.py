"""Python clients for the bridge: blocking (:class:`Client`) and asyncio (:class:`AsyncClient`).

Both speak plain MessagePack-RPC through :class:`npcadapt.protocol.RpcConnection`, send
observations as float32 binary, and raise :class:`~npcadapt.errors.RemoteError` with the
server's code and message when a call fails; :class:`~npcadapt.errors.OverloadedError`
(``retryable = True``) when the server shed it (code 6, OVERLOADED).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from .errors import ConnectionLostError, OverloadedError, RemoteError
from .protocol import OVERLOADED, Limits, Response, RpcConnection

if TYPE_CHECKING:
    import msgpack

_Mask = Sequence[bool] | npt.NDArray[np.bool_]  # one bool per action: may the NPC take it

__all__ = ["AsyncClient", "Client", "ConnectionLostError", "OverloadedError", "RemoteError", "read_message"]


def read_message(sock: socket.socket, unpacker: msgpack.Unpacker) -> Any:
    """The next whole msgpack message from `sock` through `unpacker` (a msgpack.Unpacker that
    keeps whatever follows the message for the next call), for raw-protocol tools and tests;
    ConnectionError if the peer closes first."""
    while (msg := next(unpacker, None)) is None:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before a whole message arrived")
        unpacker.feed(data)
    return msg


def _obs(obs: Any) -> bytes:
    return np.ascontiguousarray(obs, dtype="<f4").tobytes()


def _result(resp: Response) -> Any:
    if resp.error is not None:
        code, message = (resp.error + [None, None])[:2] if isinstance(resp.error, list) else (0, str(resp.error))
        raise (OverloadedError if code == OVERLOADED else RemoteError)(code, str(message))
    return resp.result


def _act_params(
    archetype: str, player: str, npc: str, obs: npt.ArrayLike, mask: _Mask | None, greedy: bool
) -> list[Any]:
    params: list[Any] = [archetype, player, npc, _obs(obs)]
    options: dict[str, list[bool] | bool] = {}
    if mask is not None:
        options["mask"] = [bool(m) for m in mask]
    if greedy:
        options["greedy"] = True
    return params + [options] if options else params


def _rows(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """[player, npc, obs(, options)] rows with obs as binary."""
    return [[r[0], r[1], _obs(r[2]), *r[3:]] for r in rows]


class Client:
    """Blocking client: one call at a time, or pipelined with :meth:`call_many`.

    When the connection drops, the call in flight raises :class:`ConnectionLostError` and
    the next call connects again (and authenticates with the same token), so a restarted
    server is picked up without a new client."""

    def __init__(self, host: str = "127.0.0.1", port: int = 7777, *, token: str | None = None, timeout: float = 30.0):
        self.address = (host, port)
        self.token = token
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(self.address, timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rpc = RpcConnection(Limits(), role="client")
        self._pending: dict[int, Response] = {}
        if self.token is not None:
            try:
                self.call("auth", self.token)
            except BaseException:  # refused or dropped: no half-open, unauthenticated socket stays behind
                if self.sock is not None:
                    self.sock.close()
                    self.sock = None
                raise

    def _socket(self) -> socket.socket:
        """The open socket, reconnecting first if the last one dropped."""
        if self.sock is None:
            try:
                self._connect()
            except OSError as exc:
                self.sock = None
                raise ConnectionLostError(f"cannot reconnect to {self.address[0]}:{self.address[1]}: {exc}") from exc
        assert self.sock is not None
        return self.sock

    def _lost(self, why: str) -> ConnectionLostError:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return ConnectionLostError(f"connection to {self.address[0]}:{self.address[1]} lost: {why}")

    def _send(self, data: bytes) -> None:
        try:
            self._socket().sendall(data)
        except ConnectionLostError:
            raise
        except OSError as exc:
            raise self._lost(str(exc)) from exc

    def _receive(self, msgid: int) -> Response:
        while msgid not in self._pending:
            try:
                data = self._socket().recv(1 << 16)
            except OSError as exc:
                raise self._lost(str(exc)) from exc
            if not data:
                raise self._lost("the server closed it")
            for event in self.rpc.receive_data(data):
                if isinstance(event, Response):
                    self._pending[event.msgid] = event
        return self._pending.pop(msgid)

    def call(self, method: str, *params: Any) -> Any:
        self._socket()
        msgid, data = self.rpc.request(method, list(params))
        self._send(data)
        return _result(self._receive(msgid))

    def call_many(self, calls: Sequence[tuple[str, Sequence[Any]]], *, return_exceptions: bool = False) -> list[Any]:
        """Send every call, then collect results in order (responses may arrive in any order).
        With `return_exceptions`, a call the server refused gives its RemoteError in the list
        instead of raising (as asyncio.gather does)."""
        self._socket()
        ids = []
        for method, params in calls:
            msgid, data = self.rpc.request(method, list(params))
            self._send(data)
            ids.append(msgid)
        responses = [self._receive(i) for i in ids]  # read every reply before raising any
        if not return_exceptions:
            return [_result(r) for r in responses]
        results: list[Any] = []
        for response in responses:
            try:
                results.append(_result(response))
            except RemoteError as exc:
                results.append(exc)
        return results

    def notify(self, method: str, *params: Any) -> None:
        self._socket()
        self._send(self.rpc.notification(method, list(params)))

    # -- the bridge's methods ----------------------------------------------------------
    # (each result's type is the method's reply, as the server's method table defines it)
    def archetypes(self) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", self.call("archetypes"))

    def act(
        self,
        archetype: str,
        player: str,
        npc: str,
        obs: npt.ArrayLike,
        *,
        mask: _Mask | None = None,
        greedy: bool = False,
    ) -> dict[str, Any]:
        return cast("dict[str, Any]", self.call("act", *_act_params(archetype, player, npc, obs, mask, greedy)))

    def act_batch(self, archetype: str, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", self.call("act_batch", archetype, _rows(rows)))

    def feedback(self, player: str, npc: str, reward: float, done: bool = False, *, wait: bool = False) -> None:
        """As a notification (fire and forget), or as a request with `wait=True`."""
        if wait:
            self.call("feedback", player, npc, float(reward), bool(done))
        else:
            self.notify("feedback", player, npc, float(reward), bool(done))

    def adapter_info(self, archetype: str, player: str) -> dict[str, Any] | None:
        return cast("dict[str, Any] | None", self.call("adapter_info", archetype, player))

    def action_probs(self, archetype: str, rows: Sequence[Sequence[Any]], *, base: bool = False) -> list[list[float]]:
        """Per [player, obs] row, every action's probability under that player's policy (the
        base's with `base=True`); nothing is sampled or logged."""
        params: list[Any] = [archetype, [[r[0], _obs(r[1])] for r in rows]]
        probs = self.call("action_probs", *params, {"base": True}) if base else self.call("action_probs", *params)
        return cast("list[list[float]]", probs)

    def prior_info(self, archetype: str, player: str) -> dict[str, Any] | None:
        """Where the player stands on the archetype's population prior (see Service.prior_info)."""
        return cast("dict[str, Any] | None", self.call("prior_info", archetype, player))

    def reset_player(self, archetype: str, player: str) -> bool:
        return cast("bool", self.call("reset_player", archetype, player))

    def flush(self) -> int:
        return cast("int", self.call("flush"))

    def stats(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self.call("stats"))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client: many calls in flight on one connection, matched by msgid."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.rpc = RpcConnection(Limits(), role="client")
        self._waiting: dict[int, asyncio.Future[Response]] = {}
        self._reader_task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, host: str = "127.0.0.1", port: int = 7777, *, token: str | None = None) -> AsyncClient:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        if token is not None:
            await client.call("auth", token)
        return client

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(1 << 16):
                for event in self.rpc.receive_data(data):
                    if isinstance(event, Response) and event.msgid in self._waiting:
                        self._waiting.pop(event.msgid).set_result(event)
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionLostError("server closed the connection"))
            self._waiting.clear()

    async def call(self, method: str, *params: Any) -> Any:
        if self._reader_task.done():  # its cleanup has already failed every waiting call
            raise ConnectionLostError("server closed the connection")
        msgid, data = self.rpc.request(method, list(params))
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiting[msgid] = fut
        self.writer.write(data)
        return _result(await fut)

    def notify(self, method: str, *params: Any) -> None:
        self.writer.write(self.rpc.notification(method, list(params)))

    async def act(
        self,
        archetype: str,
        player: str,
        npc: str,
        obs: npt.ArrayLike,
        *,
        mask: _Mask | None = None,
        greedy: bool = False,
    ) -> dict[str, Any]:
        return cast("dict[str, Any]", await self.call("act", *_act_params(archetype, player, npc, obs, mask, greedy)))

    async def act_batch(self, archetype: str, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", await self.call("act_batch", archetype, _rows(rows)))

    def feedback(self, player: str, npc: str, reward: float, done: bool = False) -> None:
        self.notify("feedback", player, npc, float(reward), bool(done))

    async def close(self) -> None:
        self._reader_task.cancel()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, asyncio.CancelledError):
            pass
