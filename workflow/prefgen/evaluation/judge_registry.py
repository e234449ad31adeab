"""The judges: who scores a generated image for a (user, prompt), and a registry of them by name.

PIPE judges personalization with its own user model (Eq. 1) and image quality with general
models; on the synthetic world we also know each user's true reward, so the ``oracle`` judge
measures what the others only estimate (and ``evaluate`` reports how often each judge agrees
with it). What a judge is (``Judge``, ``JudgeSpec``, ``JudgeContext``) is defined in
:mod:`prefgen.evaluation.judge_types`.

Core judges run in the core environment:

- ``oracle``: the user's true reward ``lambda*_u . r(x, c)`` (synthetic world only, from
  ``data/truth/``; ``prefgen.data.truth.oracle_reward``);
- ``pipe``: the PIPE user model ``lambda_u^T phi(c, x)``;
- ``population``: the K=1 reward model (the PickScore analogue);
- ``clip_score``: text-image similarity of the run's CLIP.

The last three come from ``prefgen.user_model.scorer.UserModelScorer`` (one instance shared by
all three). The paper-scale judges (ImageReward, HPSv2, aesthetic, PickScore) are registered by
:mod:`prefgen.evaluation.external_judges` and run in envs/judges.yaml.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefgen.evaluation.judge_types import (
    FunctionJudge,
    Judge,
    JudgeContext,
    JudgeSpec,
)


# --- core judges ----------------------------------------------------------------------------
def _oracle(ctx: JudgeContext) -> Judge:
    from prefgen.data.truth import load_truth, oracle_reward

    if ctx.truth_dir is None:
        raise ValueError(
            "judge 'oracle' needs the synthetic world's truth (data/truth/); it "
            "does not exist for real Pick-a-Pic data: remove 'oracle' from "
            "judge.core.judges"
        )
    truth = load_truth(ctx.truth_dir)
    return FunctionJudge(
        lambda images, captions, users: oracle_reward(images, captions, users, truth)
    )


def _scorer(ctx: JudgeContext) -> Any:
    if "user_model" not in ctx.cache:
        from prefgen.user_model.scorer import UserModelScorer

        ctx.cache["user_model"] = UserModelScorer.from_run(ctx.run_dir)
    return ctx.cache["user_model"]


def _pipe(ctx: JudgeContext) -> Judge:
    scorer = _scorer(ctx)
    return FunctionJudge(lambda images, captions, users: scorer.pipe(images, captions, users))


def _population(ctx: JudgeContext) -> Judge:
    scorer = _scorer(ctx)
    return FunctionJudge(lambda images, captions, users: scorer.population(images, captions))


def _clip_score(ctx: JudgeContext) -> Judge:
    scorer = _scorer(ctx)
    return FunctionJudge(lambda images, captions, users: scorer.clip_score(images, captions))


CORE_JUDGES: dict[str, JudgeSpec] = {
    spec.name: spec
    for spec in [
        JudgeSpec(
            "oracle",
            "the user's true reward (synthetic world ground truth)",
            "core",
            personal=True,
            build=_oracle,
            synthetic_only=True,
        ),
        JudgeSpec(
            "pipe", "PIPE user model lambda_u . phi(c, x)", "core", personal=True, build=_pipe
        ),
        JudgeSpec(
            "population",
            "population reward model (K=1, PickScore analogue)",
            "core",
            personal=False,
            build=_population,
        ),
        JudgeSpec(
            "clip_score",
            "text-image cosine similarity of the run's CLIP",
            "core",
            personal=False,
            build=_clip_score,
        ),
    ]
}


def registry() -> dict[str, JudgeSpec]:
    """Every judge by name: the core ones and the external (judges-environment) ones."""
    from prefgen.evaluation.external_judges import EXTERNAL_JUDGES

    return {**CORE_JUDGES, **EXTERNAL_JUDGES}


def build_judges(names: Sequence[str], environment: str, ctx: JudgeContext) -> dict[str, Judge]:
    """Build the named judges, refusing any that belong to another environment."""
    # the external registry imports torch; core-only runs (mini scale) skip it
    reg = CORE_JUDGES if set(names) <= set(CORE_JUDGES) else registry()
    judges: dict[str, Judge] = {}
    for name in names:
        if name not in reg:
            raise KeyError(f"unknown judge '{name}'; registered: {sorted(reg)}")
        spec = reg[name]
        if spec.environment != environment:
            raise ValueError(
                f"judge '{name}' runs in the '{spec.environment}' environment, not "
                f"'{environment}': list it under judge.{_section(spec)}.judges"
            )
        judges[name] = spec.build(ctx)
    return judges


def _section(spec: JudgeSpec) -> str:
    return "core" if spec.environment == "core" else "external"
