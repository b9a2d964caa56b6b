"""Baking: Stable Diffusion hypernetworks into base models, so any loader runs them.

- :mod:`~hyperkit.bake.sd_base` opens checkpoints and diffusers UNets and finds their attention
  layers; :mod:`~hyperkit.bake.fold` folds affine hypernetworks exactly;
  :mod:`~hyperkit.bake.stream` writes the result without loading the base;
- :mod:`~hyperkit.bake.onnx_unet` rewrites or extends ONNX UNets;
- :mod:`~hyperkit.bake.diffusers_apply` applies a hypernetwork at run time on a diffusers UNet
  (the parity reference, and a feature of its own);
- :mod:`~hyperkit.bake.report` renders the parity report.

Example:
    >>> from hyperkit.bake import bake_sd
    >>> callable(bake_sd)
    True
"""

from __future__ import annotations

from hyperkit.bake.sd import BakeResult, bake_sd

__all__ = ["BakeResult", "bake_sd"]
