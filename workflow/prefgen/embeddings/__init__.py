"""Stage package: embeddings — one vector per user that the generator is conditioned on.

``pipe``: E_u = λ_uᵀW from the PIPE user model (``user_embeddings``); ``ppd``: VLM hidden states
of a few of the user's preference pairs (``vlm_embeddings``). Both write
``embeddings/<name>.safetensors`` with ``user_ids [U] int64`` and ``emb [U, D]``, read by
``prefgen.generation.adapters.UserEmbeddings``.
"""
