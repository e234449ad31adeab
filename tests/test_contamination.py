"""The contamination audit: a planted leak of each kind is found, named and fails the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefgen.cli import main as cli_main
from prefgen.evaluation.contamination import audit

SEEN, UNSEEN = [1, 2], [9]


def pair(user: int, w: str, lo: str, caption: str = "a red cube", rid: int = 0) -> dict[str, Any]:
    return {
        "ranking_id": rid,
        "user_id": user,
        "caption": caption,
        "prompt_id": 0,
        "image_w_uid": w,
        "image_l_uid": lo,
        "is_tie": False,
    }


def write(df: pd.DataFrame | list[dict], path: Path) -> str:
    pd.DataFrame(df).to_parquet(path, index=False)
    return str(path)


@pytest.fixture()
def world(tmp_path: Path) -> dict[str, str]:
    """Evaluation sets of a tiny study: two seen users, one unseen user with a support set."""
    train = [pair(u, f"t{u}{i}", f"t{u}{i}x", rid=10 * u + i) for u in SEEN for i in range(4)]
    test = [pair(u, f"s{u}", f"s{u}x", rid=100 + u) for u in SEEN]
    test_seen = [pair(u, f"q{u}", f"q{u}x", caption="a held caption", rid=200 + u) for u in SEEN]
    support = [pair(9, f"u{i}", f"u{i}x", rid=300 + i) for i in range(2)]
    test_unseen = [pair(9, f"v{i}", f"v{i}x", rid=400 + i) for i in range(2)]
    clean = pd.DataFrame(
        [
            {
                "ranking_id": r["ranking_id"],
                "user_id": r["user_id"],
                "caption": r["caption"],
                "image_0_uid": r["image_w_uid"],
                "image_1_uid": r["image_l_uid"],
                "label_0": 1.0,
                "label_1": 0.0,
                "is_tie": False,
            }
            for r in train + test + test_seen + support + test_unseen
        ]
    )
    episodes = pd.DataFrame(
        [
            {
                "episode_id": 0,
                "user_id": 1,
                "user_group": "seen",
                "kind": "1v1",
                "caption": "a red cube",
                "candidate_uids": ["t10", "t10x"],
                "candidate_captions": ["a red cube"] * 2,
                "liked_index": 0,
            }
        ]
    )
    references = pd.DataFrame(
        [{"user_id": 1, "slot": 0, "image_uid": "t11", "caption": "a red cube", "liked": True}]
    )
    eval_set = pd.DataFrame(
        [
            {
                "user_id": u,
                "user_group": g,
                "prompt_id": 7,
                "caption": "an unseen prompt",
                "seed": 1,
                "dominant_type": -1,
            }
            for u, g in ((1, "seen"), (9, "unseen"))
        ]
    )
    paths = {
        "pipe_train": write(train, tmp_path / "pipe_train.parquet"),
        "pipe_test": write(test, tmp_path / "pipe_test.parquet"),
        "ppd_test_seen": write(test_seen, tmp_path / "ppd_test_seen.parquet"),
        "ppd_test_unseen": write(test_unseen, tmp_path / "ppd_test_unseen.parquet"),
        "support": write(support, tmp_path / "support.parquet"),
        "lpp_episodes": write(episodes, tmp_path / "episodes.parquet"),
        "lpp_references": write(references, tmp_path / "references.parquet"),
        "clean_pairs": write(clean, tmp_path / "pairs.parquet"),
        "generation": write(eval_set, tmp_path / "eval_set.parquet"),
    }
    return paths


def spec(
    world: dict[str, str],
    *training: str,
    evaluated_on: dict[str, str] | None = None,
    allowed: dict[str, str] | None = None,
) -> dict[str, Any]:
    sets = {k: v for k, v in world.items() if k != "pipe_train"}
    consumer = {
        "trains_on": [{"kind": "split", "path": p} for p in training],
        "evaluated_on": evaluated_on
        if evaluated_on is not None
        else {"pipe_test": "preference_accuracy", "generation": "win_rates"},
    }
    if allowed:
        consumer["allowed"] = allowed
    return {"consumers": {"model": consumer}, "evaluation_sets": sets}


def row(table: pd.DataFrame, evaluation_set: str) -> pd.Series:
    return table.set_index("evaluation_set").loc[evaluation_set]


def test_training_only_on_train_and_support_is_clean(world: dict[str, str]) -> None:
    table = audit(spec(world, world["pipe_train"], world["support"]))
    assert row(table, "pipe_test")["verdict"] == "clean"
    assert row(table, "generation")["verdict"] == "clean"
    assert row(table, "generation")["seen_users_trained"] == 1
    # train touches the LPP episode's candidates, but this consumer is not scored on them
    lpp = row(table, "lpp_episodes")
    assert lpp["shared_labelled_pairs"] > 0
    assert lpp["verdict"] == "allowed: not evaluated on this set"


def test_a_test_pair_in_training_is_a_violation(world: dict[str, str], tmp_path: Path) -> None:
    first = pd.read_parquet(world["pipe_test"]).iloc[0]
    # the same pair with the images swapped is the same labelled pair
    swapped = pair(int(first["user_id"]), first["image_l_uid"], first["image_w_uid"], rid=999)
    leaky = pd.concat([pd.read_parquet(world["pipe_train"]), pd.DataFrame([swapped])])
    path = write(leaky, tmp_path / "leaky.parquet")
    r = row(audit(spec(world, path)), "pipe_test")
    assert r["shared_labelled_pairs"] == 1 and r["verdict"] == "violation"


def test_unseen_users_other_pairs_are_a_violation(world: dict[str, str]) -> None:
    table = audit(spec(world, world["pipe_train"], world["ppd_test_unseen"]))
    r = row(table, "generation")
    assert r["unseen_users_trained"] == 1 and r["verdict"] == "violation"
    # a consumer whose spec gives a reason for it is allowed, with the reason in the verdict
    table = audit(spec(world, world["ppd_test_unseen"], allowed={"generation": "history sweep"}))
    assert row(table, "generation")["verdict"] == "allowed: history sweep"


def test_held_out_prompts_in_training_are_a_violation(
    world: dict[str, str], tmp_path: Path
) -> None:
    leaky = pd.DataFrame([pair(1, "n1", "n1x", caption="an unseen prompt")])
    table = audit(spec(world, world["pipe_train"], write(leaky, tmp_path / "p.parquet")))
    r = row(table, "generation")
    assert r["shared_held_out_prompts"] == 1 and r["verdict"] == "violation"


def test_lpp_items_on_an_episode_candidate_are_a_violation(
    world: dict[str, str], tmp_path: Path
) -> None:
    items = pd.DataFrame(
        [{"user_id": 1, "image_uid": "t10", "caption": "a red cube", "liked": True}]
    )
    s = spec(world)
    s["consumers"]["model"] = {
        "trains_on": [
            {
                "kind": "lpp_items",
                "path": world["lpp_references"],
                "train_items": write(items, tmp_path / "items.parquet"),
            }
        ],
        "evaluated_on": {"lpp_episodes": "preference_prediction_topk"},
    }
    r = row(audit(s), "lpp_episodes")
    assert r["shared_labelled_pairs"] == 1 and r["verdict"] == "violation"


def test_the_command_fails_naming_the_consumer_and_set(
    world: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    s = spec(world, world["pipe_train"], world["pipe_test"])
    named = r"model on pipe_test \(preference_accuracy\): 2 shared"
    with pytest.raises(RuntimeError, match=named):
        cli_main(
            [
                "audit-contamination",
                "--params",
                "{}",
                "--spec",
                json.dumps(s),
                "--table",
                str(tmp_path / "contamination"),
            ]
        )
    ok = spec(world, world["pipe_train"])
    assert (
        cli_main(
            [
                "audit-contamination",
                "--params",
                "{}",
                "--spec",
                json.dumps(ok),
                "--table",
                str(tmp_path / "clean"),
            ]
        )
        == 0
    )
    clean = pd.read_csv(tmp_path / "clean.csv")
    assert not (clean["verdict"] == "violation").any()
