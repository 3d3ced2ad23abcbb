"""`npcadapt archetype init|list|show`: define and inspect archetypes."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_archetypes_argument, archetype_dirs, load_archetype, parse_ints, parse_list, parse_obs


def _cmd_archetype_init(args) -> int:
    from ..archetypes import init_archetype

    directory = Path(args.dir) / args.name
    arch = init_archetype(
        directory,
        args.name,
        args.obs,
        args.actions,
        hidden=args.hidden,
        rank=args.rank,
        alpha=args.alpha,
        rslora=args.rslora,
        description=args.description,
        env=args.env,
        seed=args.seed,
        overwrite=args.force,
    )
    print(
        f"wrote {directory / 'archetype.toml'} and {directory / arch.spec.weights} (untrained, version {arch.base_hash})"
    )
    print(
        f"observation length {arch.spec.obs_dim}, {arch.spec.n_actions} actions, LoRA rank {arch.spec.lora.rank} on {', '.join(arch.spec.lora.targets)}"
    )
    return 0


def _cmd_archetype_list(args) -> int:
    from ..archetypes import find_archetypes

    for name, arch in sorted(find_archetypes(archetype_dirs(args)).items()):
        state = "trained" if arch.spec.trained else "UNTRAINED"
        print(
            f"{name:<14} version {arch.base_hash}  obs {arch.spec.obs_dim:>3}  actions {arch.spec.n_actions:>2}  {state:<9}  {arch.directory}"
        )
    return 0


def _cmd_archetype_show(args) -> int:
    print(json.dumps(load_archetype(args, args.name).describe(), indent=2))
    return 0


def add_archetype(sub) -> None:
    p = sub.add_parser("archetype", help="create and inspect NPC archetype definitions")
    asub = p.add_subparsers(dest="archetype_cmd", required=True)
    init = asub.add_parser("init", help="write a new archetype definition with freshly initialised weights")
    init.add_argument("name", help="archetype name (lowercase, e.g. 'guard')")
    init.add_argument("--obs", type=parse_obs, required=True, help="observation features, NAME:SIZE comma-separated")
    init.add_argument("--actions", type=parse_list, required=True, help="action names, comma-separated")
    init.add_argument("--dir", default="archetypes", help="parent directory (default: ./archetypes)")
    init.add_argument("--hidden", type=parse_ints, default=(64, 64), help="hidden layer sizes (default 64,64)")
    init.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    init.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    init.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r")
    init.add_argument("--description", default="", help="one-line description")
    init.add_argument("--env", default=None, help="gymnasium env id this archetype is trained in")
    init.add_argument("--seed", type=int, default=0, help="initialisation seed")
    init.add_argument("--force", action="store_true", help="overwrite an existing definition")
    init.set_defaults(func=_cmd_archetype_init)
    for name, func, text in (
        ("list", _cmd_archetype_list, "list known archetypes"),
        ("show", _cmd_archetype_show, "print one archetype as JSON"),
    ):
        q = asub.add_parser(name, help=text)
        if name == "show":
            q.add_argument("name")
        add_archetypes_argument(q)
        q.set_defaults(func=func)
