"""Premier (learned user tokens modulating the text tokens), everything of it in one place.

``modulation`` (the preference adapters, their UNet hook, the dispersion and denoising losses,
the trainer/sampler plug-in ``PremierConditioning`` and stage 2's fitting), ``user_tokens``
(the per-user token table and new users as combinations of training users), and one module per
rule: ``premier_init`` (``prefgen premier-init``), ``premier_new_users`` (``prefgen
premier-new-users``: stage 2), ``premier_history`` and ``premier_ablation`` (the analysis
tables). ``train_premier`` and ``sample_premier`` run the shared trainer and sampler
(``prefgen.generation.train_adapter``, ``prefgen.generation.sample``) with this plug-in.
"""
