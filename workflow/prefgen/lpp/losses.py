"""LPP's training objective (§3.3): L_all = L_base + L_aux, L_aux = L+ + L-.

Inputs are the score head's logits ``[N, 2]`` (column 0 = M+, the "like" logit; column 1 = M-,
the "dislike" logit) for N targets, whether each target is liked, and a group id per target
(the user whose references it was scored against: ranking pairs only compare targets of the same
user).

- L_base (Eq. 4) = ½ (CE over liked targets with label "like" + CE over disliked targets with
  label "dislike"): each class averaged on its own, so the class balance of a batch does not
  tilt the classifier.
- L+ (Eq. 6) ranks M+ of each liked target above M+ of each disliked target of the same user;
  L- (Eq. 7) ranks M- of each disliked target above M- of each liked one. Two forms of the
  per-pair penalty f(d) on the difference d:
  ``logistic``: f(d) = −log σ(d), LPP's Eqs. 6-7 verbatim (never exactly zero);
  ``hinge``: f(d) = max(0, margin − d), the margin form: zero once the liked target leads every
  disliked one by the margin (M+) and trails it by the margin (M-), so well-ranked pairs stop
  pulling and the gradient goes to the pairs still wrong.
- L_aux is averaged over the pairs of the batch (LPP: 1/N Σ).

Pure functions of tensors: testable on CPU with hand-made numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUX_FORMS = ("hinge", "logistic")


def base_loss(logits: torch.Tensor, liked: torch.Tensor) -> torch.Tensor:
    """L_base (Eq. 4): mean CE of liked targets (label 0, "like") and of disliked ones (label 1),
    averaged with weight ½ each (a class absent from the batch contributes nothing)."""
    liked = liked.bool()
    ce = F.cross_entropy(logits.float(), (~liked).long(), reduction="none")
    terms = [ce[mask].mean() for mask in (liked, ~liked) if bool(mask.any())]
    if not terms:
        raise ValueError("base_loss: empty batch")
    return torch.stack(terms).sum() / 2.0


def ranking_pairs(liked: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j): i liked, j disliked, same group (every such pair in the batch)."""
    liked = liked.bool()
    same = group[:, None] == group[None, :]
    pos, neg = torch.nonzero(same & liked[:, None] & ~liked[None, :], as_tuple=True)
    return pos, neg


def pair_penalty(diff: torch.Tensor, form: str, margin: float) -> torch.Tensor:
    """f(d) per pair: hinge max(0, margin − d) or logistic −log σ(d)."""
    if form == "hinge":
        return F.relu(margin - diff)
    if form == "logistic":
        return F.softplus(-diff)
    raise ValueError(f"lpp.aux.form: expected one of {AUX_FORMS}, got {form!r}")


def aux_loss(
    logits: torch.Tensor, liked: torch.Tensor, group: torch.Tensor, form: str, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L+, L-) (Eqs. 6-7) over every (liked, disliked) pair of the same group.

    L+ penalises M+(liked) − M+(disliked) below the margin; L- penalises M-(disliked) −
    M-(liked) below it. A batch without such a pair gives zeros (no ranking information).
    """
    pos, neg = ranking_pairs(liked, group)
    logits = logits.float()
    if pos.numel() == 0:
        zero = logits.sum() * 0.0
        return zero, zero
    l_plus = pair_penalty(logits[pos, 0] - logits[neg, 0], form, margin).mean()
    l_minus = pair_penalty(logits[neg, 1] - logits[pos, 1], form, margin).mean()
    return l_plus, l_minus


def lpp_loss(
    logits: torch.Tensor,
    liked: torch.Tensor,
    group: torch.Tensor,
    use_aux: bool,
    form: str,
    margin: float,
) -> dict[str, torch.Tensor]:
    """L_all (Eq. 8) and its terms; with ``use_aux=False`` (ablation) L_all = L_base."""
    base = base_loss(logits, liked)
    l_plus, l_minus = aux_loss(logits, liked, group, form, margin)
    aux = l_plus + l_minus
    total = base + aux if use_aux else base
    return {"loss": total, "base": base, "aux": aux, "plus": l_plus, "minus": l_minus}
