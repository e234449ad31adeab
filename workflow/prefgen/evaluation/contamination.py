"""``prefgen audit-contamination``: is any model or judge trained on what it is evaluated on?

The audit reads the files each consumer (fitted model, judge, embedding) was trained on — the
rule's own inputs, passed in by Snakemake as a spec — and the evaluation sets, and counts per
(consumer, evaluation set):

- ``shared_labelled_pairs``: training labels the set is scored on. For pair sets (PIPE test,
  PPD test_seen/test_unseen) the same (user, unordered image pair); for the LPP episodes every
  training pair of an episode's user involving one of its candidates (it carries part of the
  candidate's liked/disliked label), or for item-trained LPP the candidate items themselves.
- ``shared_held_out_prompts``: prompts the set holds out (generation: its evaluation prompts;
  PPD test_seen: its held-out captions) that appear in any training row, labelled or not.
- ``unseen_users_trained``: the set's unseen users with a training label outside their support
  set (``splits/ppd/support.parquet`` — or, for the LPP episodes, the users' references, which
  every method in that table gets alike).
- ``seen_users_trained``: the set's seen users with training labels (shared by design: a seen
  user is one the methods trained on; informational).

A consumer's ``evaluated_on`` names the table or use that scores it on a set. Verdicts:
``clean`` (nothing shared), ``allowed: <reason>`` (shared, but by design: the consumer is not
evaluated on that set, or its spec gives a reason), ``violation`` (shared with a set it is
evaluated on). Any violation makes the command fail after writing the table, naming the
consumer, the set and the counts, so ``bundle`` never packs a contaminated run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefgen.core.io import write_table
from prefgen.core.logging import get_logger

log = get_logger(__name__)

COLUMNS = [
    "consumer",
    "evaluation_set",
    "evaluated_on",
    "labels_used",
    "training_rows",
    "shared_labelled_pairs",
    "shared_held_out_prompts",
    "unseen_users_trained",
    "seen_users_trained",
    "verdict",
]
EVALUATION_SETS = ["pipe_test", "ppd_test_seen", "ppd_test_unseen", "lpp_episodes", "generation"]


class ContaminationError(RuntimeError):
    """At least one consumer trained on what it is evaluated on."""


PairKey = tuple[int, str, str]
ItemKey = tuple[int, str]


def pair_keys(users: Iterable[Any], a: Iterable[Any], b: Iterable[Any]) -> set[PairKey]:
    """(user, unordered image pair) keys: the order of the two images carries the label."""
    return {(int(u), *sorted((str(x), str(y)))) for u, x, y in zip(users, a, b, strict=True)}


@dataclass
class TrainingData:
    """What one consumer trained on, reduced to what the audit compares."""

    labels_used: bool
    rows: int = 0
    pairs: set[PairKey] = field(default_factory=set)  # labelled pairs
    items: set[ItemKey] = field(default_factory=set)  # labelled (user, image) items
    captions: set[str] = field(default_factory=set)  # every training caption
    labelled_users: set[int] = field(default_factory=set)
    _by_user: dict[int, tuple[set[PairKey], set[ItemKey]]] | None = None

    def add_pairs(self, df: pd.DataFrame, a: str, b: str, labelled: bool) -> None:
        self.rows += len(df)
        self.captions |= set(df["caption"].astype(str))
        if labelled:
            self.pairs |= pair_keys(df["user_id"], df[a], df[b])
            self.labelled_users |= set(df["user_id"].astype(np.int64).tolist())

    def add_items(self, df: pd.DataFrame) -> None:
        self.rows += len(df)
        self.captions |= set(df["caption"].astype(str))
        self.items |= set(
            zip(df["user_id"].astype(np.int64).tolist(), df["image_uid"].astype(str), strict=True)
        )
        self.labelled_users |= set(df["user_id"].astype(np.int64).tolist())

    def labelled_keys_of(self, user: int) -> tuple[set[PairKey], set[ItemKey]]:
        """The user's labelled pairs and items (indexed once, on first use)."""
        if self._by_user is None:
            self._by_user = {}
            for key in self.pairs:
                self._by_user.setdefault(key[0], (set(), set()))[0].add(key)
            for key in self.items:
                self._by_user.setdefault(key[0], (set(), set()))[1].add(key)
        return self._by_user.get(user, (set(), set()))


def read(path: str, what: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"audit: cannot read {what} {path}: {exc}") from exc


def load_training(sources: list[dict[str, Any]]) -> TrainingData:
    """Read a consumer's training sources (``kind``: what the file is and how it was used)."""
    from prefgen.generation.adapter_pairs import training_pairs

    data = TrainingData(labels_used=any(bool(s.get("labels", True)) for s in sources))
    for src in sources:
        kind, path, labelled = src["kind"], src["path"], bool(src.get("labels", True))
        if kind == "split":  # a split table, every row used
            data.add_pairs(read(path, "split"), "image_w_uid", "image_l_uid", labelled)
        elif kind == "adapter_pairs":  # the adapters' filter: held-out users and ties out
            df = training_pairs(
                read(path, "split"), read(src["holdout"], "holdout"), path, src["holdout"]
            )
            data.add_pairs(df, "image_w_uid", "image_l_uid", labelled)
        elif kind == "clean_pairs":  # ingest's pairs, minus the prompts the consumer excludes
            df = read(path, "pairs")
            if src.get("exclude_prompts"):
                gone = set(read(src["exclude_prompts"], "prompts")["caption"])
                df = df.loc[~df["caption"].isin(gone)]
            data.add_pairs(df, "image_0_uid", "image_1_uid", labelled)
        elif kind == "lpp_items":  # LPP: references and training items of its training users
            items = read(src["train_items"], "LPP training items")
            refs = read(path, "LPP references")
            refs = refs.loc[refs["user_id"].isin(set(items["user_id"]))]
            data.add_items(pd.concat([refs[items.columns.intersection(refs.columns)], items]))
        else:
            raise ValueError(f"audit: training source kind {kind!r} unknown (spec entry {src})")
    return data


@dataclass
class EvaluationSet:
    name: str
    pairs: set[PairKey]  # labelled pairs the set scores
    items: set[ItemKey]  # labelled items the set scores (LPP candidates)
    prompts: set[str]  # prompts the set holds out of training
    unseen_users: set[int]
    seen_users: set[int]
    support_pairs: set[PairKey]  # unseen users' pairs every method may see
    support_items: set[ItemKey]


def split_set(
    name: str, path: str, unseen: bool, support: set[PairKey], held_out_captions: bool = False
) -> EvaluationSet:
    df = read(path, name)
    users = set(df["user_id"].astype(np.int64).tolist())
    return EvaluationSet(
        name,
        pair_keys(df["user_id"], df["image_w_uid"], df["image_l_uid"]),
        set(),
        set(df["caption"].astype(str)) if held_out_captions else set(),
        users if unseen else set(),
        set() if unseen else users,
        support if unseen else set(),
        set(),
    )


def lpp_set(episodes_path: str, references_path: str, clean_pairs_path: str) -> EvaluationSet:
    """The LPP episodes: candidate items, and the user's pairs that carry their labels."""
    from prefgen.data.splits import episode_candidates, involves_items

    eps = read(episodes_path, "LPP episodes")
    items = episode_candidates(eps)
    clean = read(clean_pairs_path, "pairs")
    clean = clean.loc[clean["user_id"].isin(set(eps["user_id"]))]
    evidence = clean.loc[involves_items(clean, "image_0_uid", "image_1_uid", items)]
    refs = read(references_path, "LPP references")
    unseen = set(eps.loc[eps["user_group"] == "unseen", "user_id"].astype(np.int64).tolist())
    seen = set(eps.loc[eps["user_group"] != "unseen", "user_id"].astype(np.int64).tolist())
    ref_items = set(
        zip(refs["user_id"].astype(np.int64).tolist(), refs["image_uid"].astype(str), strict=True)
    )
    # a reference's own pairs with other references are the conditioning every method gets
    ref_pairs = {
        k
        for k in pair_keys(clean["user_id"], clean["image_0_uid"], clean["image_1_uid"])
        if (k[0], k[1]) in ref_items and (k[0], k[2]) in ref_items
    }
    return EvaluationSet(
        "lpp_episodes",
        pair_keys(evidence["user_id"], evidence["image_0_uid"], evidence["image_1_uid"]),
        items,
        set(),
        unseen,
        seen,
        ref_pairs,
        ref_items,
    )


def generation_set(eval_set_path: str, support: set[PairKey]) -> EvaluationSet:
    es = read(eval_set_path, "evaluation set")
    unseen = set(es.loc[es["user_group"] == "unseen", "user_id"].astype(np.int64).tolist())
    seen = set(es.loc[es["user_group"] != "unseen", "user_id"].astype(np.int64).tolist())
    return EvaluationSet(
        "generation", set(), set(), set(es["caption"].astype(str)), unseen, seen, support, set()
    )


def audit_row(
    name: str, consumer: dict[str, Any], data: TrainingData, ev: EvaluationSet
) -> dict[str, Any]:
    shared = len(data.pairs & ev.pairs) + len(data.items & ev.items)
    prompts = len(data.captions & ev.prompts)
    unseen = 0
    for user in sorted(ev.unseen_users & data.labelled_users):
        pairs, items = data.labelled_keys_of(user)
        if (pairs - ev.support_pairs) or (items - ev.support_items):
            unseen += 1
    seen = len(ev.seen_users & data.labelled_users)
    evaluated_on = consumer.get("evaluated_on", {}).get(ev.name, "")
    allowed = consumer.get("allowed", {}).get(ev.name)
    leaked = shared or prompts or unseen
    if not leaked:
        verdict = "clean"
    elif not evaluated_on:
        verdict = "allowed: not evaluated on this set"
    elif allowed:
        verdict = f"allowed: {allowed}"
    else:
        verdict = "violation"
    return {
        "consumer": name,
        "evaluation_set": ev.name,
        "evaluated_on": evaluated_on or "-",
        "labels_used": data.labels_used,
        "training_rows": data.rows,
        "shared_labelled_pairs": shared,
        "shared_held_out_prompts": prompts,
        "unseen_users_trained": unseen,
        "seen_users_trained": seen,
        "verdict": verdict,
    }


def audit(spec: dict[str, Any]) -> pd.DataFrame:
    """One row per (consumer, evaluation set) of ``spec`` (see the rule's params)."""
    sets = spec["evaluation_sets"]
    support_df = read(sets["support"], "support set")
    support = pair_keys(support_df["user_id"], support_df["image_w_uid"], support_df["image_l_uid"])
    evaluation = [
        split_set("pipe_test", sets["pipe_test"], unseen=False, support=support),
        split_set(
            "ppd_test_seen",
            sets["ppd_test_seen"],
            unseen=False,
            support=support,
            held_out_captions=True,
        ),
        split_set("ppd_test_unseen", sets["ppd_test_unseen"], unseen=True, support=support),
        lpp_set(sets["lpp_episodes"], sets["lpp_references"], sets["clean_pairs"]),
        generation_set(sets["generation"], support),
    ]
    rows = []
    for name, consumer in spec["consumers"].items():
        data = load_training(consumer["trains_on"])
        rows += [audit_row(name, consumer, data, ev) for ev in evaluation]
        log.info("audit: %s (%d training rows)", name, data.rows)
    return pd.DataFrame(rows, columns=COLUMNS)


def violations_message(table: pd.DataFrame) -> str:
    bad = table.loc[table["verdict"] == "violation"]
    lines = [
        f"{r.consumer} on {r.evaluation_set} ({r.evaluated_on}): "
        f"{r.shared_labelled_pairs} shared labelled pairs, {r.shared_held_out_prompts} "
        f"held-out prompts, {r.unseen_users_trained} unseen users trained on"
        for r in bad.itertuples(index=False)
    ]
    return "contamination: a consumer trained on what it is evaluated on:\n  " + "\n  ".join(lines)


CAPTION = (
    "Train/test contamination audit, read from the files each consumer was trained on. "
    "shared_labelled_pairs: (user, unordered image pair) labels in both training and the set "
    "(LPP episodes: training labels of an episode's candidates); shared_held_out_prompts: the "
    "set's held-out prompts in any training row; unseen_users_trained: the set's unseen users "
    "with training labels outside their support set; seen_users_trained: shared by design. "
    "Any 'violation' fails the run."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spec",
        required=True,
        help="JSON: consumers (training files, evaluated_on) and evaluation sets",
    )
    parser.add_argument("--table", required=True, help="tables/contamination (stem)")


def run(args: argparse.Namespace) -> None:
    spec = json.loads(args.spec)
    table = audit(spec)
    write_table(table, Path(args.table), caption=CAPTION)
    counts = table["verdict"].str.split(":").str[0].value_counts().to_dict()
    log.info("audit: %d rows, %s", len(table), counts)
    if (table["verdict"] == "violation").any():
        raise ContaminationError(violations_message(table))


__all__ = ["audit", "ContaminationError", "EVALUATION_SETS", "pair_keys"]
