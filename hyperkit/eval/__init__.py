"""``hyperkit eval``: CLIP metrics over generated images, reports and a CI gate.

Layers: :mod:`~hyperkit.eval.inputs` (manifest or folder → rows), :mod:`~hyperkit.eval.model`
(open_clip with local weights only), :mod:`~hyperkit.eval.encode` (threaded decoding, batched
encoding, :mod:`~hyperkit.eval.cache`), :mod:`~hyperkit.eval.metrics` (one numpy function per
metric), :mod:`~hyperkit.eval.score` and :mod:`~hyperkit.eval.stats` (tables, bootstrap CIs),
:mod:`~hyperkit.eval.report` / :mod:`~hyperkit.eval.html` (outputs), :mod:`~hyperkit.eval.gate`.
Importing this package imports neither torch nor pandas.

Example:
    >>> from hyperkit.eval import metrics
    >>> metrics.hessel_clipscore([0.4]).tolist()
    [1.0]
"""

from __future__ import annotations

from hyperkit.eval.run import EvalResult, evaluate, finish, parse_shard

__all__ = ["EvalResult", "evaluate", "finish", "parse_shard"]
