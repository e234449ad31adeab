"""LPP (latent preference prototypes): a VLM preference predictor and its evaluation.

``model`` (the VLM with prototypes prepended, LPP Eq. 1, and the like/dislike head),
``losses`` (L_base, L_aux = L+ + L-, LPP Eqs. 4-8), ``train_lpp`` (``prefgen train-lpp``),
``lpp_evaluate`` (``prefgen lpp-evaluate``: the top-K table), ``prototypes`` (``prefgen
lpp-prototypes``: attention over prototypes, LPP Fig. 3 in kind).
"""
