"""Thyroid-nodule segmentation on B-mode ultrasound: finds the nodules the US classifiers crop.

The seed studies (004 ``us_calcified_nodule``, 002 ``us_lvlnm``) cropped hand-drawn outlines; a
node fed from PACS finds them with this 2D MONAI UNet (:mod:`.model`), trained on phantoms for the
demo (:mod:`.train`).
"""

from model_zoo.us_nodule_seg.model import NoduleMask, USNoduleSeg, USSegSpec, us_seg_spec

__all__ = ["NoduleMask", "USNoduleSeg", "USSegSpec", "us_seg_spec"]
