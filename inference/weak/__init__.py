"""Weakly supervised liver-lesion segmentation by counterfactual inpainting (COIN).

A classifier learns "lesion / no lesion" from image-level labels of liver slices; a generator learns to
inpaint whatever makes the frozen classifier say "lesion" until it says "normal", kept realistic by a
discriminator on real normal slices and close to its input elsewhere; the lesion mask is where the image
and its counterfactual differ. No lesion mask is ever used in training (:mod:`inference.weak.slices`
guards them); they serve evaluation only.

Modules: :mod:`~inference.weak.slices` (liver region, slice crops, the guarded truth),
:mod:`~inference.weak.nets` (MONAI networks), :mod:`~inference.weak.training` (classifier and COIN
training), :mod:`~inference.weak.masks` (thresholds, components, metrics), :mod:`~inference.weak.baselines`
(Grad-CAM, LayerCAM, Score-CAM, RISE), :mod:`~inference.weak.model` (ONNX export, card, running the
shipped model on a volume).
"""
