"""avssl.losses: pure functions of tensors (torch only).

- :mod:`avssl.losses.reconstruction`: ``masked_mse``.
- :mod:`avssl.losses.contrastive`: ``info_nce``, ``mil_nce``, ``gather_with_grad``, ``key_ids``
  (video ids: two entries of one video are no negatives).

Losses compute in float32 under mixed-precision autocast (:mod:`avssl.losses._precision`).
- :mod:`avssl.losses.distillation`: ``dino_distill``, ``update_center``, ``mmd``, ``coral``,
  ``mean_coral``.
- :mod:`avssl.losses.clustering`: ``cluster_cross_entropy``.

Import from the submodules, e.g. ``from avssl.losses.contrastive import info_nce``.
"""
