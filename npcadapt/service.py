"""The public API object: inference, feedback, recording and online adaptation in one place.

``npcadapt.open(data_dir)`` returns a :class:`Service`. The socket bridge, the demo and
the simulation loop all call this same object:

    act / act_batch  -> decisions (engine), logged and tracked per (player, npc)
    feedback         -> rewards and episode ends; completed episodes trigger updates
    train_pending    -> batched online update of every player with enough episodes
    adapter_info / reset_player / flush / close

With a shared store (``store="redis://..."``) several servers serve the same players, and
a lease decides which one trains each player; the others forward that player's completed
episodes to it (npcadapt/lease.py).

Over 450 lines: the public API object, one method per operation a game calls; inference, the log and training are delegated to their modules."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .adapter_meta import validate_npc_id, validate_player_id
from .engine import Engine, single_row
from .episodes import EpisodeTracker
from .errors import InvalidInputError, LogError, StoreError, TrainerProcessError
from .lease import LeasedTraining
from .log import InteractionLog
from .log.writer import HELD_BYTES
from .prior.library_file import find_library
from .prior.trainer import new_player_state
from .prior.trust import trust_thresholds
from .stores import Store
from .training.online import OnlineConfig, PlayerUpdate
from .training.trainer_host import InProcessTrainer
from .training.trainer_process import TrainerProcess
from .types import AdapterInfo, BatchDecision, Decision

log = logging.getLogger(__name__)

RECORD_BYTES = 900 * 1024  # a batch's log records stay under this (the log's max_record_bytes is 1 MiB)
RECORD_ROW_OVERHEAD = 640  # bytes a row may add beyond its obs and mask: two ids of up to 256 bytes, its figures
ROUND_PLAYERS = 32  # players per background update round (docs/benchmarks.md: latency while training)
LEASE_TTL = 10.0  # seconds a training lease lasts without renewal (a shared store)
STORE_RETRY = 1.0  # seconds the background trainer waits while a shared store is unreachable


class Service:
    """Per-player adaptive NPC decisions over one data directory."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        online: OnlineConfig | None = OnlineConfig(),
        trainer_process: bool = False,
        trainer_nice: int = 10,
        record: bool = True,
        log_segment_bytes: int = 64 * 2**20,
        archetype_dirs: Iterable[str | Path] | None = None,
        capacity: int = 10_000,
        adapter_dtype: str = "float32",
        device: str | torch.device = "cpu",
        seed: int = 0,
        compile: bool = False,
        store: str | Store | None = None,
        lease_ttl: float = LEASE_TTL,
    ):
        """`online` None disables training; `record` False disables the interaction log.
        `trainer_process` runs online updates in a child process (at `trainer_nice`) instead
        of the calling thread: what a server wants, so training never holds the GIL that
        decisions need (see training/trainer_process.py).

        `store`: None keeps adapters as files under `data_dir`; ``redis://HOST:PORT/DB``
        shares them with other servers, and with `online` a training lease of `lease_ttl`
        seconds decides which server trains each player (npcadapt/lease.py).

        `archetype_dirs`, `capacity`, `adapter_dtype`, `device`, `seed`, `compile` and
        `store` go to :class:`~npcadapt.engine.Engine` (see there).
        """
        self.engine = Engine(
            data_dir,
            archetype_dirs=archetype_dirs,
            capacity=capacity,
            adapter_dtype=adapter_dtype,
            device=device,
            seed=seed,
            compile=compile,
            store=store,
        )
        self.data_dir = self.engine.data_dir
        self.log = (
            InteractionLog(self.data_dir / "logs", segment_bytes=log_segment_bytes, fsync_on_flush=True)
            if record
            else None
        )
        self.online = online
        self.tracker = EpisodeTracker()
        runtimes = {name: self.engine.runtime(name) for name in self.engine.archetypes}
        # each player's optimizer state is kept by the trainer, bounded like the adapter bank
        capacity = sum(rt.bank.capacity for rt in runtimes.values())
        self.trainer_nice = trainer_nice
        self.trainer: InProcessTrainer | TrainerProcess | None = None
        # population priors stored beside the archetypes (stale or damaged ones are refused with a warning)
        self.libraries = {
            name: lib
            for name, rt in runtimes.items()
            if online and online.prior and (lib := find_library(rt.archetype)) is not None
        }
        try:  # a settings clash fails here, not in a trainer child later
            for lib in self.libraries.values():
                trust_thresholds(lib, online)  # type: ignore[arg-type]  # libraries: only with online
        except InvalidInputError:
            if self.log is not None:
                self.log.close()
            self.engine.close()
            raise
        self._episodes_per_update = dict.fromkeys(self.libraries, 1)  # the prior learns from every episode
        self._prior_info: OrderedDict[tuple[str, str], dict] = OrderedDict()  # latest PosteriorState.describe()
        self._prior_capacity = capacity
        if online and trainer_process:
            archetypes = {name: rt.archetype for name, rt in runtimes.items()}
            self.trainer = TrainerProcess(
                archetypes,
                online,
                capacity,
                device=str(self.engine.device),
                nice=trainer_nice,
                priors=sorted(self.libraries),
            )
        elif online:
            self.trainer = InProcessTrainer(
                {name: (rt.policy, rt.layout) for name, rt in runtimes.items()}, online, capacity, self.libraries
            )
        # _train_lock guards taking episodes and installing outcomes (short); _update_lock
        # serialises the trainer's work (long), so a reset never waits for an update in flight
        self._train_lock = threading.Lock()
        self._update_lock = threading.Lock()
        self._reset_while_updating: set[tuple[str, str]] | None = None  # during an update: players reset meanwhile
        self._background: threading.Thread | None = None
        self._stop = threading.Event()
        self.counters = {"updates": 0, "skipped_updates": 0, "kl_bounded": 0, "feedback": 0, "log_records_dropped": 0}
        self.leased = self._leases(lease_ttl) if online else None
        self._store_down_until = 0.0  # monotonic: a round found the shared store unreachable

    def _leases(self, ttl: float) -> LeasedTraining | None:
        """Training leases where the store is shared (Redis); None for adapter files."""
        if not self.engine.shared:
            return None
        from .store_redis import RedisAdapterStore

        store = self.engine.store
        if not isinstance(store, RedisAdapterStore):
            raise InvalidInputError(f"online training over a shared store needs Redis, got {type(store).__name__}")
        trainer = self.trainer
        assert trainer is not None  # online is set
        return LeasedTraining(store, self.engine, self.tracker, ttl=ttl, on_claim=trainer.forget)

    # -- decisions ------------------------------------------------------------------
    @property
    def archetypes(self):
        return self.engine.archetypes

    def act(self, archetype: str, player: str, obs, *, npc: str = "npc", mask=None, greedy: bool = False) -> Decision:
        """One decision for `player`'s NPC `npc`."""
        obs_rows, masks = single_row(obs, mask)
        return self.act_batch(archetype, [player], obs_rows, npcs=[npc], masks=masks, greedy=greedy).row(0)

    def act_batch(
        self,
        archetype: str,
        players: Sequence[str],
        obs,
        *,
        npcs: Sequence[str] | None = None,
        masks=None,
        greedy=False,
    ) -> BatchDecision:
        """Decisions for N rows in one forward pass; each row logged and tracked for training."""
        npcs = ["npc"] * len(players) if npcs is None else list(npcs)
        if len(npcs) != len(players):
            raise InvalidInputError(f"got {len(npcs)} npc ids for {len(players)} rows")
        for npc in set(npcs):
            validate_npc_id(npc)
        out, obs_arr, mask_arr = self.engine.act_batch_checked(archetype, players, obs, masks=masks, greedy=greedy)
        if self.online:
            self.tracker.record(
                archetype, players, npcs, obs_arr, mask_arr, out.action, out.logp, out.value, out.decision
            )
        if self.log is not None:
            base_hash = self.engine.runtime(archetype).archetype.base_hash
            action = out.action.astype(np.int64, copy=False)
            logp, value = out.logp.astype(np.float32, copy=False), out.value.astype(np.float32, copy=False)
            versions = out.adapter_version.astype(np.int64, copy=False)
            now = time.time()
            ids = list(players)  # the records hold plain lists, whatever sequence came in
            for rows in self._record_slices(
                len(players), obs_arr.nbytes + (0 if mask_arr is None else mask_arr.nbytes)
            ):
                self._record(
                    {
                        "t": "decisions",
                        "time": now,
                        "archetype": archetype,
                        "base": base_hash,
                        "players": ids[rows],
                        "npcs": npcs[rows],
                        "obs_dim": int(obs_arr.shape[1]),
                        "obs": obs_arr[rows].tobytes(),
                        "mask": None if mask_arr is None else mask_arr[rows].tobytes(),
                        "decision": out.decision[rows].tobytes(),
                        "action": action[rows].tobytes(),
                        "logp": logp[rows].tobytes(),
                        "value": value[rows].tobytes(),
                        "adapter_version": versions[rows].tobytes(),
                    }
                )
        return out

    def action_probs(
        self, archetype: str, players: Sequence[str], obs, *, masks=None, base: bool = False
    ) -> np.ndarray:
        """Action probabilities (N, A) of each row's current policy (or of the base); no sampling."""
        return self.engine.action_probs(archetype, players, obs, masks=masks, base=base)

    # -- feedback -------------------------------------------------------------------
    def feedback(self, player: str, npc: str, reward: float, done: bool = False) -> None:
        """Attach `reward` to the latest decision of `player`'s `npc`; `done` ends the episode."""
        self.feedback_batch([player], [npc], [reward], [done])

    def feedback_batch(
        self, players: Sequence[str], npcs: Sequence[str], rewards, dones, *, skip_refused: bool = False
    ) -> list[int]:
        """Feedback for several NPCs at once (one log record; a huge batch, several). Malformed input refuses the
        whole batch; so does a row with no decision to attach to, unless `skip_refused`,
        which applies and records the other rows and returns the refused rows' indices."""
        rewards = np.asarray(rewards, dtype=np.float64)
        dones = np.asarray(dones, dtype=bool)
        if not (len(players) == len(npcs) == len(rewards) == len(dones)):
            raise InvalidInputError("players, npcs, rewards and dones must have the same length")
        if not np.isfinite(rewards).all():
            raise InvalidInputError(
                f"rewards must be finite numbers, got {rewards[~np.isfinite(rewards)][:3].tolist()}"
            )
        for player, npc in zip(players, npcs):
            validate_player_id(player)
            validate_npc_id(npc)
        refused = (
            self.tracker.feedback_batch(players, npcs, rewards, dones, skip_refused=skip_refused) if self.online else []
        )
        if refused:
            kept = np.setdiff1d(np.arange(len(players)), refused)
            players, npcs, rewards, dones = (
                [players[i] for i in kept],
                [npcs[i] for i in kept],
                rewards[kept],
                dones[kept],
            )
        self.counters["feedback"] += len(players)
        if self.log is not None and len(players):
            now = time.time()
            ids, npc_ids = list(players), list(npcs)  # the records hold plain lists
            for rows in self._record_slices(len(players), 0):
                self._record(
                    {
                        "t": "feedback",
                        "time": now,
                        "players": ids[rows],
                        "npcs": npc_ids[rows],
                        "reward": rewards[rows].tolist(),
                        "done": dones[rows].tolist(),
                    }
                )
        return refused

    # -- training -------------------------------------------------------------------
    def train_pending(self, max_players: int | None = None) -> int:
        """Update every player with enough completed episodes (at most `max_players`, those
        ready first), batched per archetype; returns the number of adapters updated."""
        if not self.online:
            return 0
        trainer = self.trainer
        assert trainer is not None  # __init__ makes one whenever online is set
        with self._update_lock:
            done, failure = 0, None
            try:
                try:
                    by_arch = self._take_round(max_players)
                except StoreError as exc:  # who trains whom is unknown: the episodes wait
                    if self.leased is None:
                        raise
                    if time.monotonic() >= self._store_down_until + STORE_RETRY:  # once per outage
                        log.warning("online training waits for the adapter store: %s", exc)
                    self._store_down_until = time.monotonic() + STORE_RETRY
                    return 0
                for archetype, items in by_arch.items():
                    try:
                        outcomes = trainer.update(archetype, items)
                    except TrainerProcessError as exc:  # these episodes are lost; other archetypes still train
                        failure = failure or exc
                        continue
                    done += self._install(archetype, outcomes)
            finally:
                self._end_round()
            if failure is not None:
                raise failure
            return done

    def _ready(self, limit: int | None) -> list[tuple[str, str]]:
        """Players with enough completed episodes for an update (one where the archetype has a prior)."""
        assert self.online is not None  # training (and counting ready players) runs only with online set
        return self.tracker.ready(self.online.episodes_per_update, limit, self._episodes_per_update)

    def _take_round(self, max_players: int | None) -> dict[str, list[PlayerUpdate]]:
        """Take the ready players' episodes with their current adapters, per archetype. With
        training leases: only the players leased here, with episodes other servers forwarded;
        the episodes of players leased elsewhere are forwarded to their holder."""
        with self._train_lock:
            ready = self._ready(max_players)
        plan = self.leased.plan(ready) if self.leased is not None else None  # Redis I/O, outside the lock
        with self._train_lock:
            taken = self.tracker.take(ready)
            self._reset_while_updating = set()
        if plan is not None:
            assert self.leased is not None
            taken = self.leased.prepare(plan, taken)
        by_arch: dict[str, list[PlayerUpdate]] = {}
        for (archetype, player), episodes in taken.items():  # a new player's adapter: made by the trainer
            flat = self.engine.adapter_row(archetype, player)
            by_arch.setdefault(archetype, []).append(PlayerUpdate(player, flat, episodes))
        return by_arch

    def _install(self, archetype: str, outcomes) -> int:
        """Install updated adapters, except players reset while the update ran; a result with
        non-finite numbers is skipped (the player keeps their adapter), never the others.
        With training leases, only players still leased here, and the round waits for their
        writes."""
        upto: dict[str, str] = {}
        if self.leased is not None:
            outcomes, upto = self.leased.confirm(archetype, outcomes)
        with self._train_lock:
            reset = self._reset_while_updating
            assert reset is not None  # _take_round set it for the update in flight
            # reset while this update ran: its result must not bring the adapter back
            kept = [o for o in outcomes if (archetype, o.player) not in reset]
            results = [o for o in kept if o.params is not None]
            metas = (
                self.engine.put_adapter_rows(
                    archetype,
                    [o.player for o in results],
                    torch.stack([o.params for o in results]),
                    updates=1,
                    skip_non_finite=True,
                    forwarded_upto=upto,
                )
                if results
                else []
            )
            updated = [o for o, meta in zip(results, metas) if meta is not None]
            for o in updated:
                if o.prior is not None:
                    self._remember_prior((archetype, o.player), o.prior)
            if len(updated) < len(results):
                log.warning(
                    "online update for archetype %r gave non-finite adapters; those players keep theirs", archetype
                )
            self.counters["skipped_updates"] += len(kept) - len(updated)
            self.counters["updates"] += len(updated)
            self.counters["kl_bounded"] += sum(o.kl_scaled < 1.0 for o in updated)
        if self.leased is not None:
            try:
                self.leased.settle(archetype, [o.player for o in updated], timeout=self.leased.ttl_ms / 2000)
            except StoreError as exc:  # installed and served; the queue retries the writes
                log.warning("adapter writes of a training round not confirmed: %s", exc)
        return len(updated)

    def _end_round(self) -> None:
        assert self.trainer is not None  # a round ran: online is set, so there is a trainer
        with self._train_lock:
            reset, self._reset_while_updating = self._reset_while_updating or set(), None
            # the trainer may have stored their state again: any trainer, whenever the reset came
            for archetype, player in reset:
                self.trainer.forget(archetype, player)

    def start_background_training(self, interval: float = 0.05, players_per_round: int | None = ROUND_PLAYERS) -> None:
        """Run `train_pending` in a daemon thread while decisions keep being served.

        Each round updates at most `players_per_round` players (None: every ready player),
        those that became ready first; while a full round's worth is still ready the next
        round starts at once, otherwise the thread looks again after `interval` seconds (so
        players trickling in are still gathered into batches). Bounded rounds keep a backlog
        from becoming one long update that stalls decisions (its hand-over work runs in this
        process) and delivers every adapter only at its end.

        With the in-process trainer this thread trains, so its nice value is raised by
        `trainer_nice` (per thread on Linux) and a busy machine runs decisions first. With a
        trainer process the child has that priority; this thread only moves episodes and
        adapters and stays at normal priority, because lowered it could be descheduled while
        holding the GIL that decisions wait for.
        """
        if players_per_round is not None and players_per_round < 1:
            raise InvalidInputError(f"players_per_round must be >= 1 or None, got {players_per_round!r}")
        if self._background is not None:
            return
        nice = self.trainer_nice if isinstance(self.trainer, InProcessTrainer) else 0
        self._stop.clear()

        def loop() -> None:
            _lower_thread_priority(nice)
            try:
                assert self.trainer is not None  # training runs only with online set, which makes a trainer
                self.trainer.wait_ready(self._stop)  # a trainer process starts now, not at the first update
            except Exception:  # the first round raises it again, and logs it
                log.exception("the online trainer did not start")
            wait = 0.0  # the first round at once
            while not self._stop.wait(wait):
                try:
                    self.train_pending(players_per_round)
                    full = self._full_round_ready(players_per_round)
                    wait = 0.0 if full else max(interval, self._store_down_until - time.monotonic())
                except Exception:  # keep serving; the error is logged
                    log.exception("online training step failed")
                    wait = interval

        self._background = threading.Thread(target=loop, name="npcadapt-online-trainer", daemon=True)
        self._background.start()

    def _full_round_ready(self, players_per_round: int | None) -> bool:
        """A backlog: at least a whole round of players is waiting (and the store answers)."""
        if players_per_round is None or time.monotonic() < self._store_down_until:
            return False
        return len(self._ready(players_per_round)) >= players_per_round

    def stop_background_training(self) -> None:
        if self._background is not None:
            self._stop.set()
            self._background.join()
            self._background = None

    # -- adapters and lifecycle -----------------------------------------------------------
    def adapter_info(self, archetype: str, player: str) -> AdapterInfo | None:
        return self.engine.adapter_info(archetype, player)

    def prior_info(self, archetype: str, player: str) -> dict | None:
        """Where the player's NPC stands on the archetype's population prior, as of their last
        update: None without a prior. Keys: ``cohorts`` (in the library), ``episodes``
        (0 before the first completed one), ``cohort`` (most likely; ``cohorts`` means "unlike
        every cohort": a personal model) and its posterior weight ``confidence``, the
        ``served_cohort`` (-1: none yet), the decayed ``decisions`` behind it, ``evidence``
        (log Bayes factor, nats) and the ``share`` of the adapted tilt served, ``changes`` of
        style detected, and ``warm_from`` (archetypes whose posterior warm-started it)."""
        self.engine.runtime(archetype)
        validate_player_id(player)
        library = self.libraries.get(archetype)
        if library is None:
            return None
        with self._train_lock:
            info = self._prior_info.get((archetype, player))
        if info is None:
            assert self.online is not None  # a library is loaded only with online set
            info = new_player_state(library, self.online.prior_new_cohort).describe()
        return {"cohorts": library.cohorts, **info}

    def _remember_prior(self, key: tuple[str, str], info: dict) -> None:
        """Keep the latest prior info of a player (bounded like the trainer's states; under _train_lock)."""
        self._prior_info[key] = info
        self._prior_info.move_to_end(key)
        while len(self._prior_info) > self._prior_capacity:
            self._prior_info.popitem(last=False)

    def reset_player(self, archetype: str, player: str) -> bool:
        """Erase the player's adapter and pending episodes: they get the base policy again.

        Does not wait for an update in flight: its result for this player is dropped, and
        the trainer forgets the player's state before its next update."""
        self.engine.runtime(archetype)  # an unknown archetype or a bad id changes nothing
        validate_player_id(player)
        with self._train_lock:
            self.tracker.forget_player(archetype, player)
            if self._reset_while_updating is not None:
                self._reset_while_updating.add((archetype, player))
            if self.trainer is not None:
                self.trainer.forget(archetype, player)
            self._prior_info.pop((archetype, player), None)
            removed = self.engine.reset_player(archetype, player)
        if self.leased is not None:
            self.leased.reset(archetype, player)
        return removed

    def ready_players(self) -> int:
        """Players (per archetype) with enough completed episodes for an update, not yet taken."""
        return len(self._ready(None)) if self.online else 0

    def pending_feedback(self) -> int:
        """Steps of completed episodes waiting for the online trainer (0 without training)."""
        return self.tracker.done_steps if self.online else 0

    def limit_pending_feedback(self, steps: int | None) -> None:
        """Hold at most `steps` steps of completed episodes: past it the oldest are discarded
        (``dropped_episodes``); feedback itself is never refused. None: unbounded."""
        self.tracker.max_done_steps = steps

    def stats(self) -> dict:
        return {
            **self.engine.stats(),
            **self.counters,
            "open_episodes": self.tracker.open_count(),
            "ready_players": self.ready_players(),
            "pending_feedback": self.pending_feedback(),
            "dropped_episodes": self.tracker.dropped_episodes,
            "trainer_ready": None if self.trainer is None else self.trainer.ready,
            "trainer_restarts": getattr(self.trainer, "restarts", 0),
            **({} if self.leased is None else self.leased.stats()),
        }

    @staticmethod
    def _record_slices(rows: int, array_bytes: int) -> list[slice]:
        """A batch's rows cut into log records of at most ~RECORD_BYTES each (the log refuses a
        record over its max_record_bytes, 1 MiB), counting `array_bytes` of per-row arrays plus
        an allowance per row for ids and figures."""
        per_row = array_bytes / max(rows, 1) + RECORD_ROW_OVERHEAD
        step = max(1, int(RECORD_BYTES // per_row))
        return [slice(start, start + step) for start in range(0, rows, step)]

    def _record(self, record: dict) -> None:
        """Append to the interaction log. While the disk refuses writes the log holds records
        in memory (``HELD_BYTES``); past that a record is lost: the decision or feedback has taken
        effect all the same, so it is served, counted in ``log_records_dropped``, and every
        later flush of this process fails (it can no longer promise what it acknowledged)."""
        assert self.log is not None  # callers record only with a log
        try:
            self.log.append(record)
        except LogError as exc:
            self.counters["log_records_dropped"] += 1
            if self.counters["log_records_dropped"] == 1:
                log.error("interaction log: records lost; every flush of this process will fail: %s", exc)

    def flush(self) -> int:
        """Persist changed adapters and the interaction log. Raises LogError if the disk
        refuses writes, or if log records were ever lost in this process."""
        written = self.engine.flush()
        if self.log is not None:
            self.log.flush()
            if self.counters["log_records_dropped"]:
                raise LogError(
                    f"{self.counters['log_records_dropped']} interaction log record(s) were lost while the "
                    f"disk refused writes (past the {HELD_BYTES >> 20} MiB held in memory); the log holds "
                    "everything else"
                )
        return written

    def close(self) -> None:
        self.stop_background_training()
        if self.trainer is not None:
            self.trainer.close()
        if self.leased is not None:  # once this server's versions are stored, others may train its players
            try:
                self.engine.flush()
                self.leased.release_all()
            except StoreError as exc:
                log.warning("training leases left to lapse: %s", exc)
        try:
            self.engine.close()
        finally:
            if self.log is not None:
                self.log.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lower_thread_priority(nice: int) -> None:
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:
        log.warning("could not lower the online trainer thread's priority: %s", exc)


def open(data_dir: str | Path, **kwargs) -> Service:
    """Open the npcadapt service on `data_dir`; see :class:`Service` for options."""
    return Service(data_dir, **kwargs)
