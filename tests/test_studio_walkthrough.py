"""docs/offline.md's walkthrough, run for real: a studio's own archetype from definition to adaptation."""

from __future__ import annotations

import json

import numpy as np
from bridge_helpers import RunningBridge

from npcadapt.cli import main
from npcadapt.client import Client
from npcadapt.server import ServerConfig


def test_define_record_train_serve(tmp_path, capsys):
    archetypes, data = tmp_path / "archetypes", tmp_path / "data"
    # 1. define the archetype of the studio's game
    assert (
        main(
            [
                "archetype",
                "init",
                "guard",
                "--obs",
                "player_distance:1,player_armed:1,alarm:1",
                "--actions",
                "patrol,warn,chase,call_help",
                "--dir",
                str(archetypes),
                "--hidden",
                "32,32",
            ]
        )
        == 0
    )
    # 2. record sessions through the bridge: this "game" rewards warning unarmed players, calling help on armed ones
    rng = np.random.default_rng(0)
    with (
        RunningBridge(data, ServerConfig(port=0), archetype_dirs=[archetypes], online=None) as running,
        Client(port=running.port) as c,
    ):
        assert [a["name"] for a in c.archetypes()] == ["guard"]
        for episode in range(400):  # 60 episodes were too few: the refreshed base's preference was a coin flip
            for t in range(5):
                armed = float(rng.random() < 0.5)
                d = c.act("guard", f"player-{episode % 6}", "gate-guard", [rng.random(), armed, 0.0])
                good = ("call_help" if armed else "warn") == d["action_name"]
                c.feedback(f"player-{episode % 6}", "gate-guard", 1.0 if good else 0.0, t == 4)
        c.flush()
    # 3. train the base from those recordings, then fit every player's adapter
    assert (
        main(
            [
                "train",
                "base",
                "--archetype",
                "guard",
                "--archetypes",
                str(archetypes),
                "--logs",
                str(data / "logs"),
                "--top",
                "0.3",
            ]
        )
        == 0
    )
    result = json.loads((archetypes / "guard" / "train_result.json").read_text())
    assert result["kept_mean_return"] > result["all_mean_return"]
    assert (
        main(
            [
                "train",
                "adapters",
                "--logs",
                str(data / "logs"),
                "--archetypes",
                str(archetypes),
                "--epochs",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    # 4. serve with per-player adaptation: the refreshed base prefers the rewarded actions
    with (
        RunningBridge(data, ServerConfig(port=0), archetype_dirs=[archetypes]) as running,
        Client(port=running.port) as c,
    ):
        unarmed = [c.act("guard", "new-player", "g", [0.5, 0.0, 0.0], greedy=True)["action_name"] for _ in range(3)]
        armed = [c.act("guard", "new-player", "g", [0.5, 1.0, 0.0], greedy=True)["action_name"] for _ in range(3)]
        assert set(unarmed) == {"warn"} and set(armed) == {"call_help"}
        # every recorded player got a fitted adapter from `train adapters`, and the server serves it
        # (an adapter for another base would be refused and the base served: version 0)
        assert all(c.act("guard", f"player-{i}", "g", [0.5, 0.0, 0.0])["adapter_version"] >= 1 for i in range(6))
