"""The one `npcadapt` command. It owns printing, progress bars and exit codes.

Subcommands are registered by small `_add_*` functions; each handler receives the
parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import NpcAdaptError

KL_BOUND = 5.0  # = OnlineConfig.kl_bound (kept here so --help needs no torch import; a test checks)


def _parse_obs(text: str) -> list[tuple[str, int]]:
    """'health:1,position:2' -> [('health', 1), ('position', 2)]."""
    features = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, size = part.partition(":")
        try:
            features.append((name.strip(), int(size) if size else 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"observation feature {part!r} must be NAME or NAME:SIZE") from None
    if not features:
        raise argparse.ArgumentTypeError("give at least one observation feature")
    return features


def _parse_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in _parse_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# -- archetype ------------------------------------------------------------------------
def _cmd_archetype_init(args) -> int:
    from .archetypes import init_archetype

    directory = Path(args.dir) / args.name
    arch = init_archetype(
        directory, args.name, args.obs, args.actions, hidden=args.hidden, rank=args.rank,
        alpha=args.alpha, rslora=args.rslora, description=args.description, env=args.env,
        seed=args.seed, overwrite=args.force,
    )
    print(f"wrote {directory / 'archetype.toml'} and {directory / arch.spec.weights} (untrained, version {arch.base_hash})")
    print(f"observation length {arch.spec.obs_dim}, {arch.spec.n_actions} actions, LoRA rank {arch.spec.lora.rank} on {', '.join(arch.spec.lora.targets)}")
    return 0


def _archetype_dirs(args) -> list[Path]:
    from .archetypes import BUILTIN_DIR

    return [BUILTIN_DIR, *map(Path, args.archetypes or [])]


def _archetype(args, name: str):
    """The named archetype from the built-in and --archetypes directories."""
    from .archetypes import find_archetypes

    found = find_archetypes(_archetype_dirs(args))
    if name not in found:
        raise NpcAdaptError(f"unknown archetype {name!r}; known: {sorted(found)}")
    return found[name]


def _cmd_archetype_list(args) -> int:
    from .archetypes import find_archetypes

    for name, arch in sorted(find_archetypes(_archetype_dirs(args)).items()):
        state = "trained" if arch.spec.trained else "UNTRAINED"
        print(f"{name:<14} version {arch.base_hash}  obs {arch.spec.obs_dim:>3}  actions {arch.spec.n_actions:>2}  {state:<9}  {arch.directory}")
    return 0


def _cmd_archetype_show(args) -> int:
    print(json.dumps(_archetype(args, args.name).describe(), indent=2))
    return 0


def _add_archetype(sub) -> None:
    p = sub.add_parser("archetype", help="create and inspect NPC archetype definitions")
    asub = p.add_subparsers(dest="archetype_cmd", required=True)
    init = asub.add_parser("init", help="write a new archetype definition with freshly initialised weights")
    init.add_argument("name", help="archetype name (lowercase, e.g. 'guard')")
    init.add_argument("--obs", type=_parse_obs, required=True, help="observation features, NAME:SIZE comma-separated")
    init.add_argument("--actions", type=_parse_list, required=True, help="action names, comma-separated")
    init.add_argument("--dir", default="archetypes", help="parent directory (default: ./archetypes)")
    init.add_argument("--hidden", type=_parse_ints, default=(64, 64), help="hidden layer sizes (default 64,64)")
    init.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    init.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    init.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r")
    init.add_argument("--description", default="", help="one-line description")
    init.add_argument("--env", default=None, help="gymnasium env id this archetype is trained in")
    init.add_argument("--seed", type=int, default=0, help="initialisation seed")
    init.add_argument("--force", action="store_true", help="overwrite an existing definition")
    init.set_defaults(func=_cmd_archetype_init)
    for name, func, text in (("list", _cmd_archetype_list, "list known archetypes"), ("show", _cmd_archetype_show, "print one archetype as JSON")):
        q = asub.add_parser(name, help=text)
        if name == "show":
            q.add_argument("name")
        q.add_argument("--archetypes", action="append", help="extra archetype directory (repeatable)")
        q.set_defaults(func=func)


# -- bench ----------------------------------------------------------------------------
def _cmd_bench(args) -> int:
    if args.which == "inference":
        from .bench.inference import run

        result = run(rows=args.rows, resident=args.resident, repeats=args.repeats, seed=args.seed,
                     memory_players=args.memory_players, compile=args.compile)
    elif args.which == "store":
        from .bench.store import run

        result = run(seed=args.seed)
    elif args.which == "bridge":
        from .bench.bridge import run

        result = run(args.seconds, server_threads=args.server_threads or None)
    elif args.which == "fit":
        from .bench.fit import run

        result = run(players=args.players, episodes=args.episodes, epochs=args.epochs)
    elif args.which == "adapt":
        from .bench.adapt import run
        from .training.online import OnlineConfig

        result = run(args.env, players_per_persona=args.players_per_persona, episodes=args.episodes, seed=args.seed,
                     config=OnlineConfig(kl_bound=args.kl_bound))
    else:
        from .bench.log import run

        result = run()
    print(json.dumps(result))
    return 0


def _add_bench(sub) -> None:
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
    ft = bsub.add_parser("fit", help="players fitted per second by train adapters: local vs Ray 1 and 2 workers")
    ft.add_argument("--players", type=int, default=32)
    ft.add_argument("--episodes", type=int, default=20)
    ft.add_argument("--epochs", type=int, default=5)
    ad = bsub.add_parser("adapt", help="adaptation quality per persona vs oracle and full fine-tuning")
    ad.add_argument("--env", default="npcadapt/Duel-v0")
    ad.add_argument("--episodes", type=int, default=200, help="episodes per player")
    ad.add_argument("--players-per-persona", type=int, default=2)
    ad.add_argument("--kl-bound", type=float, default=KL_BOUND)
    ad.add_argument("--seed", type=int, default=0)
    for q in bsub.choices.values():
        q.set_defaults(func=_cmd_bench)


# -- train --------------------------------------------------------------------------
def _cmd_train_base(args) -> int:
    from .training.base import BaseTrainConfig, train_base

    arch = _archetype(args, args.archetype)
    directory = arch.directory
    if args.logs:
        from .recordings import read_episodes
        from .training.base_from_logs import CloneConfig, clone_base

        episodes, _ = read_episodes(args.logs, archetypes=[arch.name])
        new, summary = clone_base(directory, [e for eps in episodes.values() for e in eps],
                                  CloneConfig(top_fraction=args.top, seed=args.seed, init_from_current=not args.fresh))
        print(f"cloned the best {summary['episodes_kept']} of {summary['episodes']} recorded episodes into {arch.name}: "
              f"version {summary['previous_base_hash']} -> {new.base_hash}; adapters trained on the old version are "
              f"refused (and kept) until refitted with `npcadapt train adapters`")
        return 0
    env_id = args.env or arch.spec.env
    if not env_id:
        raise NpcAdaptError(f"archetype {args.archetype!r} names no env; pass --env ID or module:Class")
    kwargs = {"persona": "average"} if env_id.startswith("npcadapt/") else {}
    config = BaseTrainConfig(env_id=env_id, env_kwargs=kwargs, total_steps=args.steps, num_envs=args.envs,
                             ent_coef=args.ent_coef, seed=args.seed, init_from_current=not args.fresh)
    result = train_base(directory, config, progress=not args.quiet)
    print(f"trained {args.archetype} on {env_id}: {result.steps} steps in {result.seconds:.1f}s, "
          f"final return {result.final_return:.3f}, new version {result.archetype.base_hash}")
    print(f"wrote {directory}/{result.archetype.spec.weights}, train_config.toml, train_result.json")
    return 0


def _cmd_train_adapters(args) -> int:
    from dataclasses import asdict

    from tqdm import tqdm

    from .fit_report import write_fit_report
    from .recordings import read_episodes
    from .service import Service
    from .training.offline import OfflineConfig, fit_adapters

    logs = Path(args.logs)
    episodes, summary = read_episodes(logs, archetypes=args.archetype and [args.archetype], players=args.players)
    print(f"read {summary.records} records: {summary.episodes} episodes of {summary.players} players "
          f"({summary.corrupt_records} corrupt records skipped, {summary.open_episodes} unfinished episodes ignored)")
    config = OfflineConfig(epochs=args.epochs, learning_rate=args.lr, kl_bound=args.kl_bound, seed=args.seed,
                           players_per_batch=args.players_per_batch)
    data = Path(args.data) if args.data else logs.parent
    out = Path(args.out) if args.out else data / "reports"
    by_arch: dict[str, dict] = {}
    for (archetype, player), eps in episodes.items():
        by_arch.setdefault(archetype, {})[player] = eps
    with Service(data, archetype_dirs=_archetype_dirs(args), seed=args.seed, online=None, record=False) as svc:
        unknown = sorted(set(by_arch) - set(svc.archetypes))
        if unknown:
            print(f"skipping recordings of unknown archetypes {unknown}")
        for archetype in sorted(set(by_arch) & set(svc.archetypes)):
            players = by_arch[archetype]
            state = data / f".fit-{archetype}.state.json"
            executor = None
            if args.engine == "ray":
                from .training.ray_backend import RayExecutor

                executor = RayExecutor(svc.archetypes[archetype].directory, config, address=args.address, workers=args.workers)
            with tqdm(total=len(players), desc=f"fit {archetype}", unit="player", disable=args.quiet) as bar:
                rows = fit_adapters(svc, archetype, players, config, state_file=state, on_players=bar.update,
                                    executor=executor)
            json_path, png_path = write_fit_report(archetype, rows, summary.to_dict(), asdict(config), out)
            improved = sum(r["estimate_fitted"] > r["estimate_base"] for r in rows)
            print(f"{archetype}: {len(rows)} players fitted, {improved} improve the off-policy estimate; "
                  f"adapters in {data}/adapters/{archetype}; report {json_path}, plot {png_path}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train archetype bases and per-player adapters")
    tsub = p.add_subparsers(dest="train_cmd", required=True)
    ad = tsub.add_parser("adapters", help="fit each player's adapter from recorded sessions (off-policy)")
    ad.add_argument("--logs", required=True, help="interaction log directory (DATA/logs)")
    ad.add_argument("--archetype", help="only this archetype")
    ad.add_argument("--players", nargs="+", help="only these player ids")
    ad.add_argument("--data", help="where adapters are written (default: the parent of --logs)")
    ad.add_argument("--out", help="report directory (default: DATA/reports)")
    ad.add_argument("--epochs", type=int, default=20)
    ad.add_argument("--players-per-batch", type=int, default=64, help="players fitted together in one batched pass")
    ad.add_argument("--engine", choices=("local", "ray"), default="local", help="where batches run")
    ad.add_argument("--address", help="Ray cluster address ('auto' joins a running cluster; default: start a local Ray)")
    ad.add_argument("--workers", type=int, help="CPUs of the local Ray (default: all)")
    ad.add_argument("--lr", type=float, default=1e-2)
    ad.add_argument("--kl-bound", type=float, default=KL_BOUND)
    ad.add_argument("--seed", type=int, default=0)
    ad.add_argument("--archetypes", action="append", help="extra archetype directory (repeatable)")
    ad.add_argument("--quiet", action="store_true")
    ad.set_defaults(func=_cmd_train_adapters)
    base = tsub.add_parser("base", help="train an archetype's base policy with PPO on its gymnasium env")
    base.add_argument("--archetype", required=True, help="archetype name")
    base.add_argument("--env", help="gymnasium id or module:Class (default: the archetype's env)")
    base.add_argument("--logs", help="train from recorded sessions instead (behaviour cloning of the best episodes)")
    base.add_argument("--top", type=float, default=0.5, help="with --logs: share of best episodes to imitate")
    base.add_argument("--steps", type=int, default=200_000, help="environment steps (default 200k)")
    base.add_argument("--envs", type=int, default=16, help="parallel envs (default 16)")
    base.add_argument("--ent-coef", type=float, default=0.01, help="entropy bonus (keeps the base adaptable)")
    base.add_argument("--seed", type=int, default=0)
    base.add_argument("--fresh", action="store_true", help="start from fresh weights instead of the current ones")
    base.add_argument("--archetypes", action="append", help="extra archetype directory (repeatable)")
    base.add_argument("--quiet", action="store_true", help="no progress bar")
    base.set_defaults(func=_cmd_train_base)


# -- sim ------------------------------------------------------------------------------
def _online_config(args):
    from .training.online import OnlineConfig

    return OnlineConfig(episodes_per_update=args.episodes_per_update, learning_rate=args.lr, kl_bound=args.kl_bound,
                        validation_gate=not args.no_gate)


def _cmd_sim(args) -> int:
    from tqdm import tqdm

    from sim.loop import format_table, run_simulation, write_report

    from .archetypes import archetype_for_env
    from .service import Service

    data = Path(args.data)
    with Service(data, archetype_dirs=_archetype_dirs(args), seed=args.seed, online=_online_config(args),
                 record=not args.no_record) as svc:
        archetype = args.archetype or archetype_for_env(args.env, svc.archetypes)
        with tqdm(total=args.episodes, desc=f"sim {args.env}", unit="ep", disable=args.quiet) as bar:
            report = run_simulation(svc, args.env, archetype, players=args.players, episodes=args.episodes,
                                    seed=args.seed, train=not args.no_adapt, on_episode=lambda _: bar.update())
        report["stats"] = svc.stats()
    json_path, png_path = write_report(report, args.out)
    print(format_table(report))
    print(f"{report['players']} players x {args.episodes} episodes in {report['seconds']:.1f}s "
          f"({report['decisions_per_s']} decisions/s, {report['stats']['updates']} adapter updates)")
    print(f"report: {json_path}\nplot:   {png_path}\nadapters and recorded sessions: {data}")
    return 0


def _add_sim(sub) -> None:
    p = sub.add_parser("sim", help="run simulated players through the engine with online adaptation")
    p.add_argument("--env", default="npcadapt/Duel-v0", help="gymnasium env id (default npcadapt/Duel-v0)")
    p.add_argument("--archetype", help="archetype (default: the one whose env matches)")
    p.add_argument("--players", type=int, default=64)
    p.add_argument("--episodes", type=int, default=200, help="episodes per player")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="data/sim", help="data directory: adapters and interaction logs")
    p.add_argument("--out", default="runs/sim", help="where report.json and returns.png go")
    p.add_argument("--episodes-per-update", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2, help="adapter learning rate")
    p.add_argument("--kl-bound", type=float, default=KL_BOUND, help="max mean KL(adapted || base), nats")
    p.add_argument("--no-gate", action="store_true",
                   help="serve each update at once, not only as far as held-out episodes show it beats the base")
    p.add_argument("--no-adapt", action="store_true", help="serve the base only (a control run)")
    p.add_argument("--no-record", action="store_true", help="do not write the interaction log")
    p.add_argument("--archetypes", action="append", help="extra archetype directory (repeatable)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_sim)


# -- inspect ----------------------------------------------------------------------------
def _cmd_inspect_log(args) -> int:
    import numpy as np

    from .log import scan
    from .recordings import read_episodes

    scanned = scan(args.dir)
    episodes, summary = read_episodes(args.dir)
    print(f"{args.dir}: {scanned.segments} segments, {scanned.records} records, {scanned.bytes} bytes, "
          f"{len(scanned.corrupt_records)} corrupt records, torn tail {scanned.torn_tail_bytes} bytes")
    print(f"{summary.decisions} decisions, {summary.feedback} feedback events, {summary.orphan_feedback} orphan feedback, "
          f"{summary.open_episodes} unfinished episodes; bases: {dict(summary.bases)}")
    by_arch: dict[str, list] = {}
    for (archetype, _), eps in episodes.items():
        by_arch.setdefault(archetype, []).append(eps)
    for archetype, players in sorted(by_arch.items()):
        returns = [e.total_reward for eps in players for e in eps]
        print(f"  {archetype:<12} players {len(players):>5}  episodes {len(returns):>7}  "
              f"return mean {np.mean(returns):.3f}  min {np.min(returns):.3f}  max {np.max(returns):.3f}")
    return 0


def _cmd_inspect_adapter(args) -> int:
    import numpy as np

    from .service import Service

    with Service(args.data, archetype_dirs=_archetype_dirs(args), online=None, record=False) as svc:
        info = svc.adapter_info(args.archetype, args.player)
        if info is None:
            print(f"player {args.player!r} has no {args.archetype} adapter in {args.data}: they get the base policy")
            return 1
        current = svc.archetypes[args.archetype].base_hash
        if info.base_hash != current:
            print(f"STALE: trained against base {info.base_hash}, {args.archetype} is now {current}; "
                  f"the engine serves the base policy until it is refitted")
            print(json.dumps(info.to_dict(), indent=1))
            return 1
        print(json.dumps(info.to_dict(), indent=1))
        for name, tensor in svc.engine.get_adapter(args.archetype, args.player).items():
            print(f"  {name:<22} shape {tuple(tensor.shape)!s:<10} norm {float(tensor.norm()):.4f}")
        spec = svc.archetypes[args.archetype].spec
        where = "256 seeded uniform observations"
        obs = np.random.default_rng(0).random((256, spec.obs_dim), dtype=np.float32)
        if args.logs:
            from .recordings import read_episodes

            episodes, _ = read_episodes(args.logs, archetypes=[args.archetype], players=[args.player])
            steps = [o for eps in episodes.values() for ep in eps for o in ep.obs]
            if steps:
                obs, where = np.stack(steps), f"the player's {len(steps)} recorded observations"
        p = svc.action_probs(args.archetype, [args.player] * len(obs), obs)
        q = svc.action_probs(args.archetype, [args.player] * len(obs), obs, base=True)
        kl = float(np.mean(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30)), axis=1)))
        print(f"  KL(adapter || base) {kl:.4f} nats, mean over {where}")
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="summarise recordings or one player's adapter")
    isub = p.add_subparsers(dest="inspect_cmd", required=True)
    lg = isub.add_parser("log", help="sessions, players, episodes, rewards and corrupt records of a log directory")
    lg.add_argument("dir")
    lg.set_defaults(func=_cmd_inspect_log)
    ad = isub.add_parser("adapter", help="version, updates, norms and KL to base of one adapter")
    ad.add_argument("--archetype", required=True)
    ad.add_argument("--player", required=True)
    ad.add_argument("--data", default="data/serve", help="data directory holding adapters/")
    ad.add_argument("--logs", help="measure KL on this player's recorded observations from this log directory")
    ad.add_argument("--archetypes", action="append", help="extra archetype directory (repeatable)")
    ad.set_defaults(func=_cmd_inspect_adapter)


# -- export -------------------------------------------------------------------------------
def _cmd_export(args) -> int:
    from .engine import Engine
    from .export import export_onnx, export_peft

    engine = Engine(args.data, archetype_dirs=_archetype_dirs(args))
    try:
        if args.format == "onnx":
            who = args.player or "base"
            path = export_onnx(engine, args.archetype, args.player, args.out or f"exports/{args.archetype}-{who}.onnx")
        else:
            path = export_peft(engine, args.archetype, args.player, args.out or f"exports/{args.archetype}-{args.player}-peft")
    finally:
        engine.close()
    print(f"wrote {path}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a policy for in-engine inference (ONNX) or an adapter (PEFT layout)")
    esub = p.add_subparsers(dest="format", required=True)
    for fmt, text in (("onnx", "merged policy (base + the player's adapter) as ONNX: obs, mask -> logits, value"),
                      ("peft", "the player's adapter as adapter_config.json + adapter_model.safetensors")):
        q = esub.add_parser(fmt, help=text)
        q.add_argument("--archetype", required=True)
        q.add_argument("--player", required=fmt == "peft", help="player id (ONNX without it: the base policy)")
        q.add_argument("--data", default="data/serve", help="data directory holding adapters/")
        q.add_argument("--out", help="output file (onnx) or directory (peft)")
        q.add_argument("--archetypes", action="append", help="extra archetype directory (repeatable)")
        q.set_defaults(func=_cmd_export)


# -- serve ----------------------------------------------------------------------------
def _cmd_serve(args) -> int:
    import torch

    from .server import ServerConfig, serve
    from .service import Service

    if args.threads:
        torch.set_num_threads(args.threads)  # small batches: more threads only contend with the trainer
    config = ServerConfig(host=args.host, port=args.port, token=args.token, max_connections=args.max_connections,
                          idle_timeout=args.idle_timeout, batch_wait=args.batch_wait_ms / 1e3,
                          trainer_nice=args.trainer_nice)
    service = Service(args.data, archetype_dirs=_archetype_dirs(args), seed=args.seed,
                      online=None if args.no_adapt else _online_config(args), compile=args.compile)

    def ready(port: int) -> None:
        print(f"npcadapt bridge on {args.host}:{port} (data {args.data}); archetypes: {', '.join(sorted(service.archetypes))}", flush=True)

    serve(service, config, ready=ready)
    print("flushed the interaction log and adapters; bye", flush=True)
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the MessagePack-RPC socket bridge for game engines")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs --token)")
    p.add_argument("--port", type=int, default=7777, help="TCP port (0 picks a free one)")
    p.add_argument("--data", default="data/serve", help="data directory: adapters and interaction logs")
    p.add_argument("--token", default=None, help="shared secret; clients must call auth(token) first")
    p.add_argument("--max-connections", type=int, default=1024)
    p.add_argument("--idle-timeout", type=float, default=300.0, help="seconds before an idle client is closed")
    p.add_argument("--batch-wait-ms", type=float, default=0.0, help="how long a batch waits for more rows")
    p.add_argument("--episodes-per-update", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2, help="adapter learning rate")
    p.add_argument("--kl-bound", type=float, default=KL_BOUND, help="max mean KL(adapted || base), nats")
    p.add_argument("--no-gate", action="store_true",
                   help="serve each update at once, not only as far as held-out episodes show it beats the base")
    p.add_argument("--no-adapt", action="store_true", help="serve without online adaptation")
    p.add_argument("--compile", action="store_true", help="torch.compile the batched forward")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0 keeps torch's default)")
    p.add_argument("--trainer-nice", type=int, default=10,
                   help="added to the online trainer thread's nice value (Linux) so decisions come first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--archetypes", action="append", help="extra archetype directory (repeatable)")
    p.set_defaults(func=_cmd_serve)


# -- demo -----------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    from .demo import add_arguments, main

    p = sub.add_parser("demo", help="play the pygame demo: a village whose NPCs adapt to you (--headless: a bot plays)")
    add_arguments(p)
    p.set_defaults(func=main)


# -- main -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npcadapt", description="NPCs that adapt to each player with per-player LoRA adapters.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS = [_add_demo, _add_archetype, _add_train, _add_sim, _add_serve, _add_inspect, _add_export, _add_bench]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except NpcAdaptError as exc:
        print(f"npcadapt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npcadapt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
