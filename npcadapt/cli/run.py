"""`npcadapt sim` and `npcadapt serve`: run the engine (`npcadapt demo` is in :mod:`.demo`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInputError
from ..service import LEASE_TTL, ROUND_PLAYERS
from . import argtypes
from .common import add_archetypes_argument, add_online_arguments, archetype_dirs, online_config


def _cmd_sim(args) -> int:
    from tqdm import tqdm

    from ..archetypes import archetype_for_env
    from ..service import Service
    from ..simulation import format_table, run_simulation, write_report

    for name in ("players", "episodes", "heldout_players", "switch_players"):
        if getattr(args, name) < 0:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.switch_at is not None and not 0 < args.switch_at < args.episodes:
        raise InvalidInputError(
            f"--switch-at must lie between 0 and --episodes ({args.episodes}), got {args.switch_at}"
        )
    data = Path(args.data)
    with Service(
        data, archetype_dirs=archetype_dirs(args), seed=args.seed, online=online_config(args), record=not args.no_record
    ) as svc:
        archetype = args.archetype or archetype_for_env(args.env, svc.archetypes)
        with tqdm(total=args.episodes, desc=f"sim {args.env}", unit="ep", disable=args.quiet) as bar:
            report = run_simulation(
                svc,
                args.env,
                archetype,
                players=args.players,
                episodes=args.episodes,
                seed=args.seed,
                train=not args.no_adapt,
                on_episode=lambda _: bar.update(),
                heldout_players=args.heldout_players,
                switch_players=args.switch_players,
                switch_at=args.switch_at,
            )
        report["stats"] = svc.stats()
    json_path, png_path = write_report(report, args.out)
    print(format_table(report))
    print(
        f"{report['players']} players x {args.episodes} episodes in {report['seconds']:.1f}s "
        f"({report['decisions_per_s']} decisions/s, {report['stats']['updates']} adapter updates)"
    )
    print(f"report: {json_path}\nplot:   {png_path}\nadapters and recorded sessions: {data}")
    return 0


def add_sim(sub) -> None:
    p = sub.add_parser("sim", help="run simulated players through the engine with online adaptation")
    p.add_argument("--env", default="npcadapt/Duel-v0", help="gymnasium env id (default npcadapt/Duel-v0)")
    p.add_argument("--archetype", help="archetype (default: the one whose env matches)")
    p.add_argument("--players", type=int, default=64)
    p.add_argument("--episodes", type=int, default=200, help="episodes per player")
    p.add_argument(
        "--heldout-players",
        type=int,
        default=2,
        metavar="N",
        help="extra players per held-out persona (one the base never saw; default 2)",
    )
    p.add_argument(
        "--switch-players",
        type=int,
        default=2,
        metavar="N",
        help="extra players per switch pair of the env (change style once; default 2)",
    )
    p.add_argument("--switch-at", type=int, metavar="EPISODE", help="episode at which they switch (default: half way)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="data/sim", help="data directory: adapters and interaction logs")
    p.add_argument("--out", default="runs/sim", help="where report.json and returns.png go")
    add_online_arguments(p)
    p.add_argument("--no-adapt", action="store_true", help="serve the base only (a control run)")
    p.add_argument("--no-record", action="store_true", help="do not write the interaction log")
    add_archetypes_argument(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_sim)


def _cmd_serve(args) -> int:
    from ..allocator import tune_allocator

    tune_allocator()  # before the server's threads exist: a long-running process's RSS follows use
    import torch

    from ..server import ServerConfig, bind_listener, serve
    from ..service import Service

    if args.threads:
        torch.set_num_threads(args.threads)  # small batches: more threads only contend with the trainer
    limits = {} if args.input_budget_mb is None else {"input_budget_bytes": round(args.input_budget_mb * 2**20)}
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            token=args.token,
            max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            batch_wait=args.batch_wait_ms / 1e3,
            busy_poll=args.busy_poll_us / 1e6,
            train_round_players=args.train_round_players,
            pre_auth_max_bytes=args.pre_auth_max_bytes,
            max_queued_rows=args.max_queued_rows,
            max_pending_feedback=args.max_pending_feedback,
            **limits,
        )
    except InvalidInputError as exc:  # name the flag, not the field
        raise InvalidInputError(_name_flags(str(exc))) from None
    online = None if args.no_adapt else online_config(args)
    sock = bind_listener(config.host, config.port)  # before the trainer process starts: a busy port fails fast
    try:
        service = Service(
            args.data,
            archetype_dirs=archetype_dirs(args),
            seed=args.seed,
            online=online,
            compile=args.compile,
            trainer_process=args.trainer == "process",
            trainer_nice=args.trainer_nice,
            store=args.store,
            lease_ttl=args.lease_ttl,
        )
    except BaseException:
        sock.close()
        raise

    def ready(port: int) -> None:
        where = f"data {args.data}" + (
            f", adapters in {getattr(service.engine.store, 'where', '')}" if args.store else ""
        )
        print(
            f"npcadapt bridge on {args.host}:{port} ({where}); archetypes: {', '.join(sorted(service.archetypes))}",
            flush=True,
        )

    serve(service, config, ready=ready, sock=sock)
    print("flushed the interaction log and adapters; bye", flush=True)
    return 0


# ServerConfig fields set by a `serve` flag (whose units may differ: the message says which)
_SERVE_FLAGS = {
    "input_budget_bytes": "--input-budget-mb",
    "pre_auth_max_bytes": "--pre-auth-max-bytes",
    "max_connections": "--max-connections",
    "idle_timeout": "--idle-timeout",
    "batch_wait": "--batch-wait-ms",
    "busy_poll": "--busy-poll-us",
    "port": "--port",
    "max_queued_rows": "--max-queued-rows",
    "max_pending_feedback": "--max-pending-feedback",
    "train_round_players": "--train-round-players",
}


def _name_flags(message: str) -> str:
    """`message` with each ServerConfig field name replaced by its flag."""
    import re

    return re.sub(r"\b(" + "|".join(_SERVE_FLAGS) + r")\b", lambda m: _SERVE_FLAGS[m.group(1)], message)


def add_serve(sub) -> None:
    from ..server import ServerConfig, default_input_budget

    p = sub.add_parser("serve", help="run the MessagePack-RPC socket bridge for game engines")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs --token)")
    p.add_argument("--port", type=argtypes.port, default=7777, help="TCP port (0 picks a free one)")
    p.add_argument("--data", default="data/serve", help="data directory: adapters and interaction logs")
    p.add_argument(
        "--store",
        type=argtypes.store_url,
        default=None,
        metavar="URL",
        help="keep adapters in Redis, shared with other servers (redis://HOST:PORT/DB); default: files in --data",
    )
    p.add_argument(
        "--lease-ttl",
        type=argtypes.positive_float,
        default=LEASE_TTL,
        metavar="SECONDS",
        help=f"with --store: how long a server keeps training a player after its last round there "
        f"before another may take over; longer than a training round (default {LEASE_TTL:g})",
    )
    p.add_argument("--token", default=None, help="shared secret; clients must call auth(token) first")
    p.add_argument("--max-connections", type=argtypes.positive_int, default=1024)
    p.add_argument(
        "--idle-timeout", type=argtypes.positive_float, default=300.0, help="seconds before an idle client is closed"
    )
    p.add_argument(
        "--batch-wait-ms", type=argtypes.nonnegative_float, default=0.0, help="how long a batch waits for more rows"
    )
    p.add_argument(
        "--busy-poll-us",
        type=argtypes.nonnegative_float,
        default=0.0,
        help="microseconds the server keeps polling instead of sleeping after each request "
        "(lower latency for CPU; default 0 = off)",
    )
    p.add_argument(
        "--pre-auth-max-bytes",
        type=argtypes.positive_int,
        default=ServerConfig.pre_auth_max_bytes,
        metavar="N",
        help="with --token: bytes of one message, and of replies waiting to be read, a connection "
        f"may hold before auth (default {ServerConfig.pre_auth_max_bytes})",
    )
    p.add_argument(
        "--input-budget-mb",
        type=argtypes.positive_float,
        default=None,
        metavar="MB",
        help="input buffered across all connections (counted twice: buffer and scanner); past half of "
        "it the largest holders pause, past it the largest are closed (default min(256, RAM/8) MB: "
        f"{default_input_budget() / 2**20:.0f} here)",
    )
    p.add_argument(
        "--max-queued-rows",
        type=argtypes.positive_int,
        default=ServerConfig.max_queued_rows,
        metavar="N",
        help="decision rows waiting for a forward; past it act/act_batch get OVERLOADED "
        f"(default {ServerConfig.max_queued_rows})",
    )
    p.add_argument(
        "--max-pending-feedback",
        type=argtypes.positive_int,
        default=ServerConfig.max_pending_feedback,
        metavar="N",
        help="steps of completed episodes held for the online trainer; past it the oldest completed "
        f"episodes are discarded (default {ServerConfig.max_pending_feedback})",
    )
    add_online_arguments(p)
    p.add_argument("--no-adapt", action="store_true", help="serve without online adaptation")
    p.add_argument("--compile", action="store_true", help="torch.compile the batched forward")
    p.add_argument(
        "--threads", type=argtypes.nonnegative_int, default=1, help="torch threads (default 1; 0 keeps torch's default)"
    )
    p.add_argument(
        "--trainer",
        choices=("process", "thread"),
        default="process",
        help="where online updates run: a child process (default; never holds the server's GIL) "
        "or a thread of the server process",
    )
    p.add_argument(
        "--trainer-nice",
        type=int,
        default=10,
        help="added to the online trainer's nice value (Linux) so decisions come first",
    )
    p.add_argument(
        "--train-round-players",
        type=argtypes.positive_int,
        default=ROUND_PLAYERS,
        help=f"players per online update round (default {ROUND_PLAYERS}); a backlog is worked "
        "through round after round",
    )
    p.add_argument("--seed", type=int, default=0)
    add_archetypes_argument(p)
    p.set_defaults(func=_cmd_serve)
