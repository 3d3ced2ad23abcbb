"""Prior sweep: rebuild the population priors with LibraryConfig overrides into a copy of the
archetypes, then run a reduced `bench adapt` (no full fine-tune, 1 held-out player per persona)
on each env; one JSON line per env. The recordings are made once per work dir, as
scripts/build_priors.py makes them (seed 11, 4 players per persona, 30 episodes).

usage: .venv/bin/python scripts/research/prior_sweep.py NAME 'LIB_JSON' 'ONLINE_JSON' [ENV ...]
           [--episodes 40] [--seed 0] [--ppp 1] [--switch 0] [--baselines] [--cross] [--work runs/prior_sweep]
  LIB_JSON: LibraryConfig overrides, {"*": {...}} for all or {"duelist": {...}}; '{}' keeps the defaults.
  ONLINE_JSON: OnlineConfig settings, e.g. '{"prior_change_nats": "9"}'.
  NAME "ship" with an existing WORK/arch_ship (a copy of assets/archetypes) runs the shipped priors.
"""
import json, shutil, sys, time, argparse
from dataclasses import replace
from pathlib import Path
from npcadapt.archetypes import BUILTIN_DIR, find_archetypes
from npcadapt.prior.library import LibraryConfig, build_library, with_transfers
from npcadapt.prior.library_file import LIBRARY_NAME, find_library, save_library
from npcadapt.recordings import read_episodes
from npcadapt.bench import adapt
from npcadapt.training.online import OnlineConfig

ap = argparse.ArgumentParser()
ap.add_argument("name"); ap.add_argument("lib"); ap.add_argument("online")
ap.add_argument("envs", nargs="*")
ap.add_argument("--episodes", type=int, default=40)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--ppp", type=int, default=1)
ap.add_argument("--switch", type=int, default=0)
ap.add_argument("--cross", action="store_true")
ap.add_argument("--baselines", action="store_true")
ap.add_argument("--work", default="runs/prior_sweep")
a = ap.parse_args()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the recordings of build_priors.py
from build_priors import ENVS as PRIOR_ENVS, record  # noqa: E402

GAMMA = {archetype: gamma for archetype, gamma, _ in PRIOR_ENVS.values()}
ENVS = {archetype: env_id for env_id, (archetype, _, _) in PRIOR_ENVS.items()}

lib_over = json.loads(a.lib)
work = Path(a.work)
if not (work / "rec" / "logs").exists():
    record(work / "rec")
root = work / f"arch_{a.name}"
if not root.exists():
    shutil.copytree(BUILTIN_DIR, root)
    episodes, _ = read_episodes(work / "rec" / "logs")
    by_arch = {}
    for (arch_name, player), eps in episodes.items():
        by_arch.setdefault(arch_name, {})[player] = eps
    for _pass in range(2):
        found = find_archetypes([root])
        for name, gamma in GAMMA.items():
            arch = found[name]
            over = dict(lib_over.get("*", {}), **lib_over.get(name, {}))
            cfg = LibraryConfig(gamma=gamma, **over)
            lib, cohort_of = build_library(arch, by_arch[name], cfg)
            sources = {n: (l, o) for n, o in found.items() if n != name and n in by_arch and (l := find_library(o)) is not None}
            lib = with_transfers(lib, cohort_of, sources, by_arch)
            save_library(lib, arch.directory / LIBRARY_NAME)
online = OnlineConfig().with_settings([f"{k}={v}" for k, v in json.loads(a.online).items()])
envs = a.envs or list(ENVS.values())
for env in envs:
    t = time.time()
    r = adapt.run(env, players_per_persona=a.ppp, episodes=a.episodes, seed=a.seed, config=online, archetype_dirs=[root],
                  heldout_players=1, switch_players=a.switch, full_finetune=False, baselines=a.baselines,
                  cross_archetype=a.cross, out=None)
    out = {"exp": a.name, "env": env.split("/")[1], "named": r["gain_at"], "held": r["heldout_gain_at"],
           "avg": r["average_vs_base"], "tol": r["average_tolerance"], "kl": r["noise_kl"],
           "switch": r["switch_recovery_episodes"], "cross5": r["cross_archetype_gain_at_5"],
           "best": r["best_baseline_gain_at"], "s": round(time.time() - t)}
    print(json.dumps(out), flush=True)
