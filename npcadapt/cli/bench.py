"""`npcadapt bench ...`: run a benchmark, print its one JSON line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidInputError
from .common import KL_BOUND


def _bench_inference(args: argparse.Namespace) -> dict:
    from ..bench import inference

    return inference.run(
        rows=args.rows,
        resident=args.resident,
        repeats=args.repeats,
        seed=args.seed,
        memory_players=args.memory_players,
        compile=args.compile,
    )


def _bench_store(args: argparse.Namespace) -> dict:
    from ..bench import store

    return store.run(seed=args.seed)


def _bench_log(args: argparse.Namespace) -> dict:
    from ..bench import log

    return log.run()


def _bench_bridge(args: argparse.Namespace) -> dict:
    from ..bench import bridge

    return bridge.run(
        args.seconds,
        server_threads=args.server_threads or None,
        backlog_players=args.backlog_players,
        driver_players=args.driver_players,
        trainer=args.trainer,
        busy_poll_us=args.busy_poll_us,
    )


def _bench_fit(args: argparse.Namespace) -> dict:
    from ..bench import fit

    return fit.run(players=args.players, episodes=args.episodes, epochs=args.epochs)


def _bench_adapt(args: argparse.Namespace) -> dict:
    from ..bench import adapt
    from ..training.online import OnlineConfig

    config = OnlineConfig(kl_bound=args.kl_bound).with_settings(args.set or [])  # InvalidInputError naming a bad one
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # refused now, not after minutes of benchmark
        raise InvalidInputError(
            f"bench adapt: --out is a directory (the plot goes in it as adapt-ENV.png); {args.out} is a file"
        )
    return adapt.run(
        args.env,
        players_per_persona=args.players_per_persona,
        episodes=args.episodes,
        seed=args.seed,
        config=config,
        full_finetune=not args.lora_only,
        baselines=not args.no_baselines,
        cross_archetype=not args.no_cross,
        heldout_players=args.heldout_players,
        switch_players=args.switch_players,
        out=args.out,
    )


def _bench_soak(args: argparse.Namespace) -> dict:
    from ..bench import soak
    from ..bench.soak_hostile import KINDS

    if not (
        args.minutes > 0
        and args.clients >= 1
        and args.players_per_client >= 1
        and args.server_kills >= 0
        and (args.trainer_kills is None or args.trainer_kills >= 0)
        and args.think_ms > 0
        and args.hostile_rate > 0
        and args.good_client_hz > 0
        and args.input_budget_mb >= 8
        and args.tmpfs_mb >= 1
        and args.warmup_s >= 0
    ):
        raise InvalidInputError(
            "bench soak: --minutes, --think-ms, --hostile-rate and --good-client-hz must be "
            "> 0; --clients, --players-per-client and --tmpfs-mb >= 1; --server-kills and "
            "--trainer-kills >= 0; --input-budget-mb >= 8 (one message of 8 MiB); --warmup-s >= 0"
        )
    kinds = None if args.hostile_kinds is None else [k for k in args.hostile_kinds.split(",") if k != "none"]
    if kinds is not None and not set(kinds) <= set(KINDS):
        raise InvalidInputError(f"--hostile-kinds: unknown {sorted(set(kinds) - set(KINDS))}; known: {list(KINDS)}")
    return soak.run(
        args.minutes,
        clients=args.clients,
        seed=args.seed,
        token=args.token,
        players_per_client=args.players_per_client,
        think_ms=args.think_ms,
        server_kills=args.server_kills,
        trainer_kills=args.trainer_kills,
        disk_full=args.disk_full,
        tmpfs_mb=args.tmpfs_mb,
        input_budget_mb=args.input_budget_mb,
        hostile_rate=args.hostile_rate,
        good_client_hz=args.good_client_hz,
        out=args.out,
        hostile_kinds=kinds,
        warmup_s=args.warmup_s,
    )


def _bench_clients(args: argparse.Namespace) -> dict:
    from ..bench import clients

    names = args.clients.split(",") if args.clients else None
    if names is not None and not set(names) <= set(clients.BUILDERS):
        raise InvalidInputError(
            f"--clients: unknown {sorted(set(names) - set(clients.BUILDERS))}; known: {list(clients.BUILDERS)}"
        )
    return clients.run(names, quick=args.quick)


def _bench_cluster(args: argparse.Namespace) -> dict:
    from ..bench import cluster

    if not args.seconds > 0:
        raise InvalidInputError(f"bench cluster: --seconds must be > 0, got {args.seconds}")
    return cluster.run(args.seconds, quick=args.quick)


# One function per `npcadapt bench` subcommand; each imports its benchmark lazily (torch, ray, ...).
_BENCHES: dict[str, Callable[[argparse.Namespace], dict]] = {
    "inference": _bench_inference,
    "store": _bench_store,
    "log": _bench_log,
    "bridge": _bench_bridge,
    "fit": _bench_fit,
    "adapt": _bench_adapt,
    "soak": _bench_soak,
    "clients": _bench_clients,
    "cluster": _bench_cluster,
}


def _cmd_bench(args: argparse.Namespace) -> int:
    result = _BENCHES[args.which](args)
    print(json.dumps(result))
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark; prints one JSON line")
    bsub = p.add_subparsers(dest="which", required=True)
    inf = bsub.add_parser("inference", help="batched mixed-adapter inference on the reference workload")
    inf.add_argument("--rows", type=int, default=1024)
    inf.add_argument("--resident", type=int, default=10_000)
    inf.add_argument("--repeats", type=int, default=30)
    inf.add_argument("--memory-players", type=int, default=100_000, help="players for the memory figure (0 skips it)")
    inf.add_argument("--seed", type=int, default=0)
    inf.add_argument("--compile", action="store_true", help="also measure the torch.compile'd kernel (slow start)")
    st = bsub.add_parser("store", help="adapter store saves/loads per second and cold-load latency")
    st.add_argument("--seed", type=int, default=0)
    bsub.add_parser("log", help="interaction log appends per second")
    br = bsub.add_parser("bridge", help="socket bridge latency and throughput vs a raw asyncio echo")
    br.add_argument("--seconds", type=float, default=3.0, help="seconds per load phase")
    br.add_argument("--server-threads", type=int, default=1, help="torch threads of the server (0: torch's default)")
    br.add_argument(
        "--backlog-players", type=int, default=4096, help="players in the trainer's backlog (training phase)"
    )
    br.add_argument(
        "--driver-players", type=int, default=16, help="players of the episode driver (training with another client)"
    )
    br.add_argument("--trainer", choices=("process", "thread"), default="process", help="the server's --trainer")
    br.add_argument("--busy-poll-us", type=float, default=0.0, help="the server's --busy-poll-us (default 0: off)")
    ft = bsub.add_parser("fit", help="players fitted per second by train adapters: local vs Ray 1 and 2 workers")
    ft.add_argument("--players", type=int, default=32)
    ft.add_argument("--episodes", type=int, default=20)
    ft.add_argument("--epochs", type=int, default=5)
    ad = bsub.add_parser(
        "adapt", help="adaptation speed per persona vs oracle, Thompson baselines and full fine-tuning"
    )
    ad.add_argument("--env", default="npcadapt/Duel-v0")
    ad.add_argument("--episodes", type=int, default=200, help="episodes per player")
    ad.add_argument("--players-per-persona", type=int, default=2)
    ad.add_argument("--kl-bound", type=float, default=KL_BOUND)
    ad.add_argument("--seed", type=int, default=0)
    ad.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="online trainer setting, e.g. --set epochs=8 --set validation_gate=false (repeatable)",
    )
    ad.add_argument("--heldout-players", type=int, default=2, help="players per held-out persona")
    ad.add_argument("--switch-players", type=int, default=2, help="players per switch pair (switching half way)")
    ad.add_argument("--lora-only", action="store_true", help="skip the full fine-tune comparison")
    ad.add_argument("--no-baselines", action="store_true", help="skip the Thompson-sampling baselines")
    ad.add_argument("--no-cross", action="store_true", help="skip the cross-archetype warm-start measurement")
    ad.add_argument(
        "--out", default="runs/bench", help="directory for the gain-vs-episodes plot (adapt-ENV.png, replaced)"
    )
    sk = bsub.add_parser(
        "soak",
        help="the bridge under good load, hostile connections and injected faults "
        "(trainer and server SIGKILL, disk full)",
    )
    sk.add_argument("--minutes", type=float, default=3.0, help="length of the soak (default 3)")
    sk.add_argument("--clients", type=int, default=200, help="good-load connections (default 200)")
    sk.add_argument("--players-per-client", type=int, default=4, help="players each connection plays (default 4)")
    sk.add_argument("--think-ms", type=float, default=100.0, help="mean pause between a connection's calls")
    sk.add_argument("--seed", type=int, default=0)
    sk.add_argument(
        "--token",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the server with a token (default on, so unauthenticated floods mean something)",
    )
    sk.add_argument("--server-kills", type=int, default=2, help="SIGKILL + restarts of the server (default 2)")
    sk.add_argument(
        "--trainer-kills",
        type=int,
        default=None,
        help="SIGKILLs of the trainer child (default one per 15 s, at least 3)",
    )
    sk.add_argument(
        "--disk-full",
        choices=("auto", "tmpfs", "rlimit"),
        default="auto",
        help="fill a tmpfs data directory (auto: if it mounts), or fail writes with RLIMIT_FSIZE",
    )
    sk.add_argument("--tmpfs-mb", type=int, default=256, help="size of the tmpfs data directory")
    sk.add_argument("--input-budget-mb", type=float, default=16.0, help="the server's --input-budget-mb")
    sk.add_argument("--hostile-rate", type=float, default=15.0, help="hostile connections opened per second")
    sk.add_argument(
        "--hostile-kinds",
        default=None,
        metavar="K1,K2",
        help="only these hostile kinds (default all: garbage, bomb, unauth_flood, wrong_token, "
        "slow_reader, slow_reader_unauth, budget_hog; 'none' for a control run without)",
    )
    sk.add_argument("--good-client-hz", type=float, default=100.0, help="the good client's acts per second")
    sk.add_argument(
        "--warmup-s",
        type=float,
        default=45.0,
        help="seconds of good load alone before the soak; the server's RSS then is the footprint (default 45)",
    )
    sk.add_argument("--out", default=None, help="also write the result (indented JSON) to this file")
    cl = bsub.add_parser(
        "clients",
        help="engine clients (C++, C#, GDScript, Python): decisions/s, round trip, encode+decode cost per act",
    )
    cl.add_argument("--clients", default=None, metavar="A,B", help="only these (default: python,cpp,csharp,godot)")
    cl.add_argument("--quick", action="store_true", help="1/20 of the calls (a smoke run)")
    cu = bsub.add_parser(
        "cluster",
        help="two servers sharing a Redis store: scaling, migration staleness, Redis outage, server kill",
    )
    cu.add_argument("--seconds", type=float, default=8.0, help="seconds per load phase (default 8)")
    cu.add_argument("--quick", action="store_true", help="2.5 s phases, 16 players (a smoke run)")
    for q in bsub.choices.values():
        q.set_defaults(func=_cmd_bench)
