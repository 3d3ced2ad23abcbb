"""`npcadapt inspect log|adapter` and `npcadapt export onnx|peft`."""

from __future__ import annotations

import json

from .common import add_archetypes_argument, archetype_dirs


def _cmd_inspect_log(args) -> int:
    import numpy as np

    from ..log import scan
    from ..recordings import read_episodes

    scanned = scan(args.dir)
    episodes, summary = read_episodes(args.dir)
    print(
        f"{args.dir}: {scanned.segments} segments, {scanned.records} records, {scanned.bytes} bytes, "
        f"{len(scanned.corrupt_records)} corrupt records, torn tail {scanned.torn_tail_bytes} bytes"
    )
    print(
        f"{summary.decisions} decisions, {summary.feedback} feedback events, {summary.orphan_feedback} orphan feedback, "
        f"{summary.open_episodes} unfinished episodes; bases: {dict(summary.bases)}"
    )
    by_arch: dict[str, list] = {}
    for (archetype, _), eps in episodes.items():
        by_arch.setdefault(archetype, []).append(eps)
    for archetype, players in sorted(by_arch.items()):
        returns = [e.total_reward for eps in players for e in eps]
        print(
            f"  {archetype:<12} players {len(players):>5}  episodes {len(returns):>7}  "
            f"return mean {np.mean(returns):.3f}  min {np.min(returns):.3f}  max {np.max(returns):.3f}"
        )
    return 0


def _cmd_inspect_adapter(args) -> int:
    import numpy as np

    from ..numerics import kl_rows
    from ..service import Service

    with Service(args.data, archetype_dirs=archetype_dirs(args), online=None, record=False) as svc:
        info = svc.adapter_info(args.archetype, args.player)
        if info is None:
            print(f"player {args.player!r} has no {args.archetype} adapter in {args.data}: they get the base policy")
            return 1
        current = svc.archetypes[args.archetype].base_hash
        if info.base_hash != current:
            print(
                f"STALE: trained against base {info.base_hash}, {args.archetype} is now {current}; "
                f"the engine serves the base policy until it is refitted"
            )
            print(json.dumps(info.to_dict(), indent=1))
            return 1
        print(json.dumps(info.to_dict(), indent=1))
        tensors = svc.engine.get_adapter(args.archetype, args.player)
        if tensors is None:  # its header read, but the file failed validation (quarantined and logged) or went away
            print(
                f"the {args.archetype} adapter of player {args.player!r} in {args.data} could not be loaded: "
                f"they get the base policy"
            )
            return 1
        for name, tensor in tensors.items():
            print(f"  {name:<22} shape {tuple(tensor.shape)!s:<10} norm {float(tensor.norm()):.4f}")
        spec = svc.archetypes[args.archetype].spec
        where = "256 seeded uniform observations"
        obs = np.random.default_rng(0).random((256, spec.obs_dim), dtype=np.float32)
        if args.logs:
            from ..recordings import read_episodes

            episodes, _ = read_episodes(args.logs, archetypes=[args.archetype], players=[args.player])
            steps = [o for eps in episodes.values() for ep in eps for o in ep.obs]
            if steps:
                obs, where = np.stack(steps), f"the player's {len(steps)} recorded observations"
        p = svc.action_probs(args.archetype, [args.player] * len(obs), obs)
        q = svc.action_probs(args.archetype, [args.player] * len(obs), obs, base=True)
        kl = float(np.mean(kl_rows(p, q)))
        print(f"  KL(adapter || base) {kl:.4f} nats, mean over {where}")
    return 0


def add_inspect(sub) -> None:
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
    add_archetypes_argument(ad)
    ad.set_defaults(func=_cmd_inspect_adapter)


def _cmd_export(args) -> int:
    from ..engine import Engine
    from ..export import export_onnx, export_peft

    engine = Engine(args.data, archetype_dirs=archetype_dirs(args))
    try:
        if args.format == "onnx":
            who = args.player or "base"
            path = export_onnx(engine, args.archetype, args.player, args.out or f"exports/{args.archetype}-{who}.onnx")
        else:
            path = export_peft(
                engine, args.archetype, args.player, args.out or f"exports/{args.archetype}-{args.player}-peft"
            )
    finally:
        engine.close()
    print(f"wrote {path}")
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a policy for in-engine inference (ONNX) or an adapter (PEFT layout)")
    esub = p.add_subparsers(dest="format", required=True)
    for fmt, text in (
        ("onnx", "merged policy (base + the player's adapter) as ONNX: obs, mask -> logits, value"),
        ("peft", "the player's adapter as adapter_config.json + adapter_model.safetensors"),
    ):
        q = esub.add_parser(fmt, help=text)
        q.add_argument("--archetype", required=True)
        q.add_argument("--player", required=fmt == "peft", help="player id (ONNX without it: the base policy)")
        q.add_argument("--data", default="data/serve", help="data directory holding adapters/")
        q.add_argument("--out", help="output file (onnx) or directory (peft)")
        add_archetypes_argument(q)
        q.set_defaults(func=_cmd_export)
