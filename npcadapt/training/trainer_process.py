"""Online training in a child process, so serving never waits on the trainer for the GIL.

In one process, the trainer thread's Python between torch ops holds the interpreter lock
that the event loop needs to answer a decision; measured on 2 cores, that alone made the
light-load p99 nearly twice what the same request load gave without training. The child
(:func:`main`, started with ``python -c``) holds an
:class:`~npcadapt.training.trainer_host.InProcessTrainer` (base policies loaded from the
same archetype directories, their hashes checked; each player's optimizer and validation
state) and runs at a lower priority; the parent keeps the adapters, the episodes and
the bank.

Channel: the child's stdin and stdout, one MessagePack map per message, numbers as
float32/bool byte strings or plain lists (nothing is pickled). The child's own stdout is
redirected to stderr before anything is imported, so a stray print cannot corrupt it.

    parent -> child: {"op": "init", ...}     child -> parent: {"ok": true} | {"error": msg}
                     {"op": "update", ...}                    {"outcomes": [...]} | {"error": msg}
                     {"op": "forget", ...}                    (no reply)
    end of input: the child exits (also when the parent dies).
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO

import msgpack
import numpy as np
import torch

from ..archetypes import Archetype
from ..episodes import Episode
from ..errors import NpcAdaptError, TrainerProcessError, TrainerRefusedError
from .online import OnlineConfig, PlayerUpdate, UpdateOutcome

log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 30  # bytes of one message on the channel
MAX_QUEUED_FORGETS = 10_000  # then forget waits for the child rather than queue more
_CAN_SELECT = sys.platform != "win32"  # select() on pipes (for the reply timeout) is POSIX only


# -- message codec --------------------------------------------------------------------------
def encode_items(items: Sequence[PlayerUpdate]) -> list[dict]:
    """PlayerUpdates (their state stays with the trainer) -> plain maps."""
    return [
        {
            "player": it.player,
            "params": None if it.params is None else it.params.detach().cpu().float().numpy().tobytes(),
            "episodes": [_encode_episode(ep) for ep in it.episodes],
        }
        for it in items
    ]


def _encode_episode(ep: Episode) -> dict:
    masks = None
    if any(m is not None for m in ep.mask):
        n_actions = next(len(m) for m in ep.mask if m is not None)
        masks = np.stack([np.ones(n_actions, bool) if m is None else m for m in ep.mask]).tobytes()  # (T, A)
    return {
        "npc": ep.npc,
        "obs": np.asarray(ep.obs, np.float32).tobytes(),
        "mask": masks,  # obs (T, D)
        "action": ep.action,
        "logp": ep.logp,
        "value": ep.value,
        "reward": ep.reward,
        "decision": ep.decision,
    }


def decode_items(archetype: Archetype, maps: Sequence[dict]) -> list[PlayerUpdate]:
    spec = archetype.spec
    items: list[PlayerUpdate] = []
    for m in maps:
        episodes = []
        for e in m["episodes"]:
            steps = len(e["action"])
            obs = np.frombuffer(e["obs"], np.float32).reshape(steps, spec.obs_dim)  # (T, D)
            masks: list[np.ndarray | None] = (
                [None] * steps
                if e["mask"] is None
                else list(np.frombuffer(e["mask"], bool).reshape(steps, spec.n_actions))
            )
            episodes.append(
                Episode(
                    archetype.name,
                    m["player"],
                    e["npc"],
                    list(obs),
                    masks,
                    e["action"],
                    e["logp"],
                    e["value"],
                    e["reward"],
                    e["decision"],
                )
            )
        params = (
            None if m["params"] is None else torch.from_numpy(np.frombuffer(m["params"], np.float32).copy())
        )  # (P,)
        items.append(PlayerUpdate(m["player"], params, episodes))
    return items


def encode_outcomes(outcomes: Sequence[UpdateOutcome]) -> list[dict]:
    return [
        {
            "player": o.player,
            "params": None if o.params is None else o.params.detach().cpu().float().numpy().tobytes(),
            "kl_to_base": o.kl_to_base,
            "kl_scaled": o.kl_scaled,
            "steps": o.steps,
            "mean_return": o.mean_return,
            "skipped": o.skipped,
            "prior": o.prior,
        }
        for o in outcomes
    ]


def decode_outcomes(maps: Sequence[dict]) -> list[UpdateOutcome]:
    return [
        UpdateOutcome(
            m["player"],
            None if m["params"] is None else torch.from_numpy(np.frombuffer(m["params"], np.float32).copy()),
            m["kl_to_base"],
            m["kl_scaled"],
            m["steps"],
            m["mean_return"],
            m["skipped"],
            prior=m.get("prior"),
        )
        for m in maps
    ]


def _config_from_map(values: dict) -> OnlineConfig:
    return OnlineConfig(**{**values, "adam_betas": tuple(values["adam_betas"])})


# -- parent side ------------------------------------------------------------------------------
def _pipe(pipe: IO[bytes] | None) -> IO[bytes]:
    """The child's stdin or stdout: never None, as TrainerProcess._start opens both as pipes."""
    assert pipe is not None
    return pipe


class TrainerProcess:
    """The InProcessTrainer interface (update / forget / close), run by a child process.

    The child starts at construction; the first ``update`` waits for it to be ready. If it
    dies, hangs past `reply_timeout` or the channel breaks, that update raises
    :class:`TrainerProcessError`, the child is stopped, and the next update starts a new
    one (players' optimizer and validation state start afresh, as after a restart). If
    the child answers its set-up with an error (an archetype changed on disk), every update
    raises that error: only a restart of the server can fix it.
    """

    def __init__(
        self,
        archetypes: Mapping[str, Archetype],
        config: OnlineConfig,
        capacity: int,
        *,
        device: str = "cpu",
        threads: int = 1,
        nice: int = 10,
        reply_timeout: float = 600.0,
        priors: Sequence[str] = (),
    ):
        """`priors`: archetypes whose population prior (beside the archetype) the child loads too."""
        self._init = {
            "op": "init",
            "config": config.to_dict(),
            "capacity": capacity,
            "device": str(device),
            "threads": threads,
            "nice": nice,
            "priors": list(priors),
            "archetypes": [
                {"name": a.name, "directory": str(a.directory), "base_hash": a.base_hash} for a in archetypes.values()
            ],
        }
        self._nice = nice
        self.reply_timeout = reply_timeout
        self._lock = threading.Lock()  # held for a whole exchange
        self._forgets: list[tuple[str, str]] = []  # sent before the next update, so forget never waits
        self._forgets_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._setup_error: TrainerRefusedError | None = None
        self._exit_code: int | None = None
        self.restarts = 0  # children started after the first (one died or hung)
        self._start()

    def _start(self) -> None:
        # the channel is a copy of the child's stdout taken before anything is imported;
        # its stdout proper goes to stderr, so nothing printed at import can corrupt it
        code = f"import os; channel = os.dup(1); os.dup2(2, 1); from {__name__} import main; main(channel)"
        low = getattr(subprocess, "BELOW_NORMAL_PRIORITY_CLASS", 0) if self._nice > 0 else 0  # Windows: no nice
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, creationflags=low
        )
        self._unpacker = msgpack.Unpacker(max_buffer_size=MAX_MESSAGE)
        self._ready = False
        self._send(self._init)

    def _send(self, message: dict) -> None:
        assert self._proc is not None  # callers hold a started child
        stdin = _pipe(self._proc.stdin)
        try:
            stdin.write(msgpack.packb(message, use_bin_type=True))
            stdin.flush()
        except OSError as exc:
            raise self._died(f"cannot write to it ({exc})") from None

    def _receive(self) -> dict:
        assert self._proc is not None  # callers hold a started child
        fd = _pipe(self._proc.stdout).fileno()
        while (message := next(self._unpacker, None)) is None:
            if _CAN_SELECT and not select.select([fd], [], [], self.reply_timeout)[0]:
                raise self._died(f"no reply within {self.reply_timeout:g} s; stopped it")
            data = os.read(fd, 1 << 20)  # blocks without the GIL
            if not data:
                raise self._died("it closed its output")
            self._unpacker.feed(data)
        if "error" in message:
            raise TrainerRefusedError(f"online trainer process: {message['error']}")
        return message

    def _died(self, how: str) -> TrainerProcessError:
        code = self._stop_child(timeout=1.0)
        return TrainerProcessError(f"online trainer process exited (code {code}): {how}; see its messages above")

    def _ensure_ready(self) -> None:
        """A live, set-up child (starting a new one if it died); raises its set-up refusal."""
        if self._setup_error is not None:
            raise self._setup_error
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                self._stop_child()
            log.warning("starting a new online trainer process; players' optimizer state starts afresh")
            self.restarts += 1
            self._start()
        if not self._ready:
            try:
                self._receive()  # {"ok": True}, or the child's set-up error
            except TrainerRefusedError as exc:
                self._setup_error = exc
                self._stop_child()
                raise
            self._ready = True

    @property
    def pid(self) -> int | None:
        """The process id of the current child; None while none is held (stopped, or refused its set-up)."""
        proc = self._proc
        return None if proc is None else proc.pid

    @property
    def alive(self) -> bool:
        """Whether a child is held and still running (set up or not)."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """The exit status of the last child stopped (negative: killed by that signal); None before any stopped."""
        return self._exit_code

    @property
    def setup_error(self) -> TrainerRefusedError | None:
        """The child's refusal of its set-up (an archetype changed on disk), which every later update
        raises; None unless it refused."""
        return self._setup_error

    @property
    def ready(self) -> bool:
        """Whether a live child has answered its set-up (it imports torch and loads every archetype)."""
        proc = self._proc
        return self._ready and proc is not None and proc.poll() is None

    def wait_ready(self, stop: threading.Event | None = None) -> bool:
        """Block until the child is set up (what the first update would wait for), or until
        `stop` is set (returns False); raises as update does. The lock is taken in slices of
        0.1 s, so close() and forget() never wait for the child's start-up."""
        while not self._ready:
            if stop is not None and stop.is_set():
                return False
            with self._lock:
                proc = self._proc
                if (
                    self._ready
                    or proc is None
                    or not _CAN_SELECT
                    or select.select([_pipe(proc.stdout).fileno()], [], [], 0.1)[0]
                ):
                    self._ensure_ready()
        return True

    def update(self, archetype: str, items: Sequence[PlayerUpdate]) -> list[UpdateOutcome]:
        with self._lock:
            self._ensure_ready()
            try:
                self._send_forgets()
                self._send({"op": "update", "archetype": archetype, "items": encode_items(items)})
                return decode_outcomes(self._receive()["outcomes"])
            except TrainerRefusedError:
                raise  # the child answered: the channel is in step
            except BaseException:  # a reply may be left unread: never read it as the next one's
                self._stop_child(timeout=0.0)
                raise

    def forget(self, archetype: str, player: str) -> None:
        """Drop a player's state in the child before its next update (also the state an update
        in flight is about to store). Never waits for the child."""
        with self._forgets_lock:
            self._forgets.append((archetype, player))
            if len(self._forgets) < MAX_QUEUED_FORGETS:
                return
        with self._lock:  # many resets and no update: deliver them now (bounded memory)
            if self._proc is None or self._proc.poll() is not None:
                with self._forgets_lock:
                    self._forgets.clear()  # no child: no state to forget
                return
            try:
                self._send_forgets()
            except TrainerProcessError as exc:  # it died: its state went with it
                log.warning("%s", exc)

    def _send_forgets(self) -> None:
        """Send the queued forgets (lock held); the child does not reply to them."""
        with self._forgets_lock:
            forgets, self._forgets = self._forgets, []
        for archetype, player in forgets:
            self._send({"op": "forget", "archetype": archetype, "player": player})

    def close(self, timeout: float = 10.0) -> None:
        """End of input: the child finishes what it is doing and exits."""
        with self._lock:
            self._stop_child(timeout)

    def _stop_child(self, timeout: float = 10.0) -> int | None:
        """Close the child's input, wait up to `timeout` s for it to exit, then kill it; returns its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        for pipe in (proc.stdin, proc.stdout):
            try:
                _pipe(pipe).close()
            except OSError:
                pass
        try:
            self._exit_code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            self._exit_code = proc.wait()
        return self._exit_code


# -- child side -------------------------------------------------------------------------------
def _prior_of(archetype: Archetype):
    """The population prior the parent uses for `archetype`; it must still be there and fresh."""
    from ..prior.library_file import LIBRARY_NAME, load_library

    return load_library(archetype.directory / LIBRARY_NAME, archetype)


def _serve(read_fd: int, out) -> None:
    import signal

    from ..archetypes import load_archetype
    from ..lora.bank import AdapterLayout
    from .trainer_host import InProcessTrainer

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then closes our input
    unpacker = msgpack.Unpacker(max_buffer_size=MAX_MESSAGE)
    trainer: InProcessTrainer | None = None
    archetypes: dict[str, Archetype] = {}
    while data := os.read(read_fd, 1 << 20):
        unpacker.feed(data)
        for message in unpacker:
            op = message["op"]
            try:
                if op == "forget":
                    assert trainer is not None  # the parent sends "init" first
                    trainer.forget(message["archetype"], message["player"])
                    continue
                if op == "init":
                    if message["nice"] > 0 and hasattr(os, "nice"):
                        os.nice(message["nice"])
                    torch.set_num_threads(message["threads"])
                    device = torch.device(message["device"])
                    models = {}
                    for entry in message["archetypes"]:
                        arch = load_archetype(entry["directory"])
                        if arch.base_hash != entry["base_hash"]:
                            raise NpcAdaptError(
                                f"archetype {arch.name!r} in {entry['directory']} changed on disk "
                                f"(base {arch.base_hash}, the server serves {entry['base_hash']})"
                            )
                        archetypes[arch.name] = arch
                        models[arch.name] = (arch.policy.to(device), AdapterLayout.from_spec(arch.spec))
                    libraries = {name: _prior_of(archetypes[name]) for name in message.get("priors", ())}
                    trainer = InProcessTrainer(
                        models, _config_from_map(message["config"]), message["capacity"], libraries
                    )
                    reply: dict = {"ok": True}
                else:  # update
                    items = decode_items(archetypes[message["archetype"]], message["items"])
                    assert trainer is not None  # the parent sends "init" first
                    reply = {"outcomes": encode_outcomes(trainer.update(message["archetype"], items))}
            except Exception as exc:
                log.exception("online trainer process: %s failed", op)
                reply = {"error": f"{op} failed: {type(exc).__name__}: {exc}"}
            try:
                out.write(msgpack.packb(reply, use_bin_type=True))
                out.flush()
            except OSError:  # the parent is gone (e.g. it failed to start): nobody to answer
                return


def main(channel: int) -> None:
    """The child: requests on stdin, replies on `channel` (the original stdout, see TrainerProcess._start).
    It exits quietly when the parent goes away, whenever that happens."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.stdout = sys.stderr
    out = os.fdopen(channel, "wb")
    try:
        _serve(0, out)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            out.close()
        except OSError:  # unflushed bytes for a parent that is gone
            pass
