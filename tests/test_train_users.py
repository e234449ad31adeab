"""Which training pairs a method keeps when its embedding file lacks some users."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from prefgen.generation.adapters import UserEmbeddings
from prefgen.generation.train_adapter import TrainData, users_with_embeddings


def data(user_ids: list[int]) -> TrainData:
    n = len(user_ids)
    pairs = pd.DataFrame(
        {"ranking_id": range(n), "user_id": user_ids, "w_row": 0, "l_row": 0, "c_row": 0}
    )
    return TrainData(
        torch.zeros(1, 4, 2, 2),
        torch.zeros(1, 4, 2, 2),
        torch.zeros(1, 3, 8),
        torch.zeros(1, 8),
        pairs,
    )


EMB = UserEmbeddings(torch.tensor([1, 2]), torch.ones(2, 4), source="embeddings/x.safetensors")


def test_pipe_policy_names_the_file_and_the_missing_users() -> None:
    with pytest.raises(ValueError, match=r"embeddings/x.safetensors: 1 training users .*\[3\]"):
        users_with_embeddings(data([1, 2, 3]), EMB, {}, EMB.source)


def test_ppd_policy_drops_and_counts_users_below_the_shot_count() -> None:
    kept, excluded = users_with_embeddings(
        data([1, 3, 2, 3, 3]), EMB, {"users_without_embedding": "drop"}, EMB.source
    )
    assert kept.pairs["user_id"].tolist() == [1, 2]
    assert kept.pairs["ranking_id"].tolist() == [0, 2]
    assert excluded == {"users": 1, "pairs": 3}


def test_complete_embeddings_keep_every_pair() -> None:
    kept, excluded = users_with_embeddings(data([2, 1]), EMB, {}, EMB.source)
    assert kept.pairs["user_id"].tolist() == [2, 1] and excluded == {"users": 0, "pairs": 0}
