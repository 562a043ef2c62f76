"""The pruning core: the pipeline score -> allocate -> top-k (-> schedule) -> Masks, and what it stands on.

* :mod:`.pruning`: ``prune`` and ``score`` (public as ``prunekit.prune`` / ``prunekit.score``);
* :mod:`.allocation`: densities across layers, exact top-k, density schedules;
* :mod:`.masks`, :mod:`.mask_file`, :mod:`.parametrized`: the validated mask object, its files and
  its two ways of holding weights at zero;
* :mod:`.prunable`, :mod:`.connectivity`, :mod:`.layer_report`: which weights are prunable, which
  kept weights still lie on an input-to-output path, the per-layer report;
* :mod:`.inputs`, :mod:`.outputs`, :mod:`.batches`: calling any model on any batch and finding its logits.
"""
