"""`npcadapt train base|adapters`: train archetype bases and per-player adapters."""

from __future__ import annotations

from pathlib import Path

from ..archetypes import find_archetypes
from ..errors import InvalidInputError, NpcAdaptError
from .argtypes import finite_float, nonnegative_float, positive_float, store_url
from .common import KL_BOUND, add_archetypes_argument, archetype_dirs, load_archetype


def _by_archetype(episodes: dict[tuple[str, str], list]) -> dict[str, dict[str, list]]:
    """read_episodes' {(archetype, player): episodes} as {archetype: {player: episodes}}."""
    by_arch: dict[str, dict[str, list]] = {}
    for (archetype, player), eps in episodes.items():
        by_arch.setdefault(archetype, {})[player] = eps
    return by_arch


def _cmd_train_base(args) -> int:
    from ..training.base import CONFIG_NAME, RESULT_NAME, BaseTrainConfig, train_base

    arch = load_archetype(args, args.archetype)
    directory = arch.directory
    if args.logs:
        from ..recordings import read_episodes
        from ..training.base_from_logs import CloneConfig, clone_base

        episodes, _ = read_episodes(args.logs, archetypes=[arch.name])
        new, summary = clone_base(
            directory,
            [e for eps in episodes.values() for e in eps],
            CloneConfig(top_fraction=args.top, seed=args.seed, init_from_current=not args.fresh),
        )
        print(
            f"cloned the best {summary['episodes_kept']} of {summary['episodes']} recorded episodes into {arch.name}: "
            f"version {summary['previous_base_hash']} -> {new.base_hash}; adapters trained on the old version are "
            f"refused (and kept) until refitted with `npcadapt train adapters`"
        )
        return 0
    env_id = args.env or arch.spec.env
    if not env_id:
        raise NpcAdaptError(f"archetype {args.archetype!r} names no env; pass --env ID or module:Class")
    kwargs = {"persona": "average"} if env_id.startswith("npcadapt/") else {}
    config = BaseTrainConfig(
        env_id=env_id,
        env_kwargs=kwargs,
        total_steps=args.steps,
        num_envs=args.envs,
        ent_coef=args.ent_coef,
        seed=args.seed,
        init_from_current=not args.fresh,
    )
    result = train_base(directory, config, progress=not args.quiet)
    print(
        f"trained {args.archetype} on {env_id}: {result.steps} steps in {result.seconds:.1f}s, "
        f"final return {result.final_return:.3f}, new version {result.archetype.base_hash}"
    )
    print(f"wrote {directory}/{result.archetype.spec.weights}, {CONFIG_NAME}, {RESULT_NAME}")
    return 0


def _cmd_train_adapters(args) -> int:
    from dataclasses import asdict

    from tqdm import tqdm

    from ..fit_report import write_fit_report
    from ..recordings import read_episodes
    from ..service import Service
    from ..training.offline import SKIPPED_NEWER, OfflineConfig, fit_adapters

    logs = [Path(d) for d in args.logs]
    if args.data is None and len(logs) > 1:
        raise InvalidInputError("with several --logs directories, pass --data (where the fit's state and reports go)")
    episodes, summary = read_episodes(logs, archetypes=args.archetype and [args.archetype], players=args.players)
    print(
        f"read {summary.records} records from {len(logs)} log director{'y' if len(logs) == 1 else 'ies'}: "
        f"{summary.episodes} episodes of {summary.players} players ({summary.corrupt_records} corrupt records "
        f"skipped, {summary.open_episodes} unfinished episodes ignored)"
    )
    config = OfflineConfig(
        epochs=args.epochs,
        learning_rate=args.lr,
        kl_bound=args.kl_bound,
        seed=args.seed,
        players_per_batch=args.players_per_batch,
    )
    data = Path(args.data) if args.data else logs[0].parent
    out = Path(args.out) if args.out else data / "reports"
    by_arch = _by_archetype(episodes)
    data.mkdir(parents=True, exist_ok=True)  # the fit's state (and without --store the adapters) go here
    with Service(
        data, archetype_dirs=archetype_dirs(args), seed=args.seed, online=None, record=False, store=args.store
    ) as svc:
        unknown = sorted(set(by_arch) - set(svc.archetypes))
        if unknown:
            print(f"skipping recordings of unknown archetypes {unknown}")
        for archetype in sorted(set(by_arch) & set(svc.archetypes)):
            players = by_arch[archetype]
            state = data / f".fit-{archetype}.state.json"
            executor = None
            if args.engine == "ray":
                from ..training.ray_backend import RayExecutor

                executor = RayExecutor(
                    svc.archetypes[archetype].directory, config, address=args.address, workers=args.workers
                )
            with tqdm(total=len(players), desc=f"fit {archetype}", unit="player", disable=args.quiet) as bar:
                rows = fit_adapters(
                    svc.engine, archetype, players, config, state_file=state, on_players=bar.update, executor=executor
                )
            json_path, png_path = write_fit_report(archetype, rows, summary.to_dict(), asdict(config), out)
            improved = sum(r["estimate_fitted"] > r["estimate_base"] for r in rows)
            skipped = sum(r.get("skipped") == SKIPPED_NEWER for r in rows)
            where = f"Redis {getattr(svc.engine.store, 'where', '')}" if args.store else f"{data}/adapters/{archetype}"
            print(
                f"{archetype}: {len(rows)} players fitted, {improved} improve the off-policy estimate, "
                f"{skipped} skipped: {SKIPPED_NEWER}; adapters in {where}; report {json_path}, plot {png_path}"
            )
    return 0


def _cmd_train_library(args) -> int:
    from ..prior.library import LibraryConfig, build_library, with_transfers
    from ..prior.library_file import LIBRARY_NAME, find_library, save_library
    from ..recordings import read_episodes

    arch = load_archetype(args, args.archetype)
    episodes, _summary = read_episodes(args.logs)  # every archetype: players shared with others give transfers
    by_arch = _by_archetype(episodes)
    players = by_arch.get(arch.name, {})
    sizes = {} if args.features is None else {"features": args.features}
    config = LibraryConfig(
        cohorts=args.cohorts,
        gamma=args.gamma,
        noise_var=args.noise_var,
        seed=args.seed,
        explore_spread=args.explore_spread,
        trust_t_open=args.trust_t_open,
        trust_t_full=args.trust_t_full,
        **sizes,
    )
    rows_of = None
    if args.engine == "ray":
        from ..training.ray_backend import RayDecisions

        rows_of = RayDecisions(arch.directory, address=args.address, workers=args.workers)
    try:
        library, cohort_of = build_library(arch, players, config, rows_of)
    finally:
        if rows_of is not None:
            rows_of.shutdown()
    found = find_archetypes(archetype_dirs(args))
    sources = {
        name: (lib, other)
        for name, other in found.items()
        if name != arch.name and name in by_arch and (lib := find_library(other)) is not None
    }
    library = with_transfers(library, cohort_of, sources, by_arch)
    path = save_library(library, Path(args.out) if args.out else arch.directory / LIBRARY_NAME)
    print(
        f"{arch.name}: {library.cohorts} cohorts from {library.meta['players']} recorded players "
        f"({len(players)} players' episodes read; sizes {library.meta['cohort_sizes']}), bound to version "
        f"{arch.base_hash}; warm starts from {sorted(library.transfer) or 'no other archetype'}; wrote {path}"
    )
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train archetype bases and per-player adapters")
    tsub = p.add_subparsers(dest="train_cmd", required=True)
    ad = tsub.add_parser("adapters", help="fit each player's adapter from recorded sessions (off-policy)")
    ad.add_argument(
        "--logs",
        required=True,
        nargs="+",
        metavar="DIR",
        help="interaction log directories (DATA/logs), one per server: each player's episodes are merged",
    )
    ad.add_argument("--archetype", help="only this archetype")
    ad.add_argument("--players", nargs="+", help="only these player ids")
    ad.add_argument(
        "--data",
        help="where adapters (without --store), the fit's state and reports are written (default: the parent "
        "of --logs; needed with several)",
    )
    ad.add_argument(
        "--store",
        type=store_url,
        metavar="URL",
        help="publish the adapters to the servers' Redis (redis://HOST:PORT/DB) with compare-and-set: "
        "a player updated online meanwhile keeps that version (skipped)",
    )
    ad.add_argument("--out", help="report directory (default: DATA/reports)")
    ad.add_argument("--epochs", type=int, default=20)
    ad.add_argument("--players-per-batch", type=int, default=64, help="players fitted together in one batched pass")
    ad.add_argument("--engine", choices=("local", "ray"), default="local", help="where batches run")
    ad.add_argument(
        "--address", help="Ray cluster address ('auto' joins a running cluster; default: start a local Ray)"
    )
    ad.add_argument("--workers", type=int, help="CPUs of the local Ray (default: all)")
    ad.add_argument("--lr", type=float, default=1e-2)
    ad.add_argument("--kl-bound", type=float, default=KL_BOUND)
    ad.add_argument("--seed", type=int, default=0)
    add_archetypes_argument(ad)
    ad.add_argument("--quiet", action="store_true")
    ad.set_defaults(func=_cmd_train_adapters)
    lib = tsub.add_parser(
        "library", help="build an archetype's population prior (player cohorts) from recorded sessions"
    )
    lib.add_argument("--archetype", required=True, help="archetype name")
    lib.add_argument(
        "--logs",
        required=True,
        nargs="+",
        metavar="DIR",
        help="interaction log directories (DATA/logs), one per server",
    )
    lib.add_argument("--cohorts", type=int, default=10, help="cohorts (K) to cluster the players into")
    lib.add_argument("--gamma", type=float, default=0.0, help="discount of the reward-to-go target (sequential games)")
    lib.add_argument(
        "--features",
        type=int,
        help="dimensions of the base's hidden features the cohort models work on (default 16; at most the last hidden size)",
    )
    lib.add_argument(
        "--noise-var",
        type=positive_float,
        help="reward noise variance of the models (default: estimated from the recordings)",
    )
    lib.add_argument(
        "--explore-spread",
        type=nonnegative_float,
        default=0.0,
        help="how far a served model is drawn from its posterior mean, in units of the spread the player's "
        "own data leaves (default 0: the mean; the duelist ships 0.75, see docs/adaptation.md)",
    )
    lib.add_argument(
        "--trust-t-open",
        type=finite_float,
        default=1.0,
        help="the trust test's t at which a player's tilt starts to be served (default 1; see docs/adaptation.md)",
    )
    lib.add_argument(
        "--trust-t-full",
        type=finite_float,
        default=4.0,
        help="the trust test's t at which it is served whole (default 4; must be above --trust-t-open)",
    )
    lib.add_argument("--out", help="where to write it (default: the archetype's directory)")
    lib.add_argument("--seed", type=int, default=0)
    lib.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="where the players' statistics are computed"
    )
    lib.add_argument(
        "--address", help="Ray cluster address ('auto' joins a running cluster; default: start a local Ray)"
    )
    lib.add_argument("--workers", type=int, help="CPUs of the local Ray (default: all)")
    add_archetypes_argument(lib)
    lib.set_defaults(func=_cmd_train_library)
    base = tsub.add_parser("base", help="train an archetype's base policy with PPO on its gymnasium env")
    base.add_argument("--archetype", required=True, help="archetype name")
    base.add_argument("--env", help="gymnasium id or module:Class (default: the archetype's env)")
    base.add_argument(
        "--logs",
        nargs="+",
        metavar="DIR",
        help="train from recorded sessions instead (behaviour cloning of the best episodes): log directories, "
        "one per server",
    )
    base.add_argument("--top", type=float, default=0.5, help="with --logs: share of best episodes to imitate")
    base.add_argument("--steps", type=int, default=200_000, help="environment steps (default 200k)")
    base.add_argument("--envs", type=int, default=16, help="parallel envs (default 16)")
    base.add_argument("--ent-coef", type=float, default=0.01, help="entropy bonus (keeps the base adaptable)")
    base.add_argument("--seed", type=int, default=0)
    base.add_argument("--fresh", action="store_true", help="start from fresh weights instead of the current ones")
    add_archetypes_argument(base)
    base.add_argument("--quiet", action="store_true", help="no progress bar")
    base.set_defaults(func=_cmd_train_base)
