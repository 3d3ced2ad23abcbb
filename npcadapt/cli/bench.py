"""`npcadapt bench ...`: run a benchmark, print its one JSON line."""

from __future__ import annotations

import json

from ..errors import InvalidInputError
from .common import KL_BOUND


def _cmd_bench(args) -> int:
    if args.which == "inference":
        from ..bench.inference import run

        result = run(rows=args.rows, resident=args.resident, repeats=args.repeats, seed=args.seed,
                     memory_players=args.memory_players, compile=args.compile)
    elif args.which == "store":
        from ..bench.store import run

        result = run(seed=args.seed)
    elif args.which == "bridge":
        from ..bench.bridge import run

        result = run(args.seconds, server_threads=args.server_threads or None, backlog_players=args.backlog_players,
                     driver_players=args.driver_players, trainer=args.trainer, busy_poll_us=args.busy_poll_us)
    elif args.which == "fit":
        from ..bench.fit import run

        result = run(players=args.players, episodes=args.episodes, epochs=args.epochs)
    elif args.which == "adapt":
        from ..bench.adapt import run
        from ..training.online import OnlineConfig

        try:
            config = OnlineConfig(kl_bound=args.kl_bound).with_settings(args.set or [])
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        result = run(args.env, players_per_persona=args.players_per_persona, episodes=args.episodes, seed=args.seed,
                     config=config, full_finetune=not args.lora_only, baselines=not args.no_baselines,
                     heldout_players=args.heldout_players, switch_players=args.switch_players, out=args.out)
    else:
        from ..bench.log import run

        result = run()
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
    br.add_argument("--backlog-players", type=int, default=4096, help="players in the trainer's backlog (training phase)")
    br.add_argument("--driver-players", type=int, default=16, help="players of the episode driver (training with another client)")
    br.add_argument("--trainer", choices=("process", "thread"), default="process", help="the server's --trainer")
    br.add_argument("--busy-poll-us", type=float, default=0.0, help="the server's --busy-poll-us (default 0: off)")
    ft = bsub.add_parser("fit", help="players fitted per second by train adapters: local vs Ray 1 and 2 workers")
    ft.add_argument("--players", type=int, default=32)
    ft.add_argument("--episodes", type=int, default=20)
    ft.add_argument("--epochs", type=int, default=5)
    ad = bsub.add_parser("adapt", help="adaptation speed per persona vs oracle, Thompson baselines and full fine-tuning")
    ad.add_argument("--env", default="npcadapt/Duel-v0")
    ad.add_argument("--episodes", type=int, default=200, help="episodes per player")
    ad.add_argument("--players-per-persona", type=int, default=2)
    ad.add_argument("--kl-bound", type=float, default=KL_BOUND)
    ad.add_argument("--seed", type=int, default=0)
    ad.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="online trainer setting, e.g. --set epochs=8 --set validation_gate=false (repeatable)")
    ad.add_argument("--heldout-players", type=int, default=2, help="players per held-out persona")
    ad.add_argument("--switch-players", type=int, default=2, help="players per switch pair (switching half way)")
    ad.add_argument("--lora-only", action="store_true", help="skip the full fine-tune comparison")
    ad.add_argument("--no-baselines", action="store_true", help="skip the Thompson-sampling baselines")
    ad.add_argument("--out", default="runs/bench", help="where the gain-vs-episodes PNG goes")
    for q in bsub.choices.values():
        q.set_defaults(func=_cmd_bench)
