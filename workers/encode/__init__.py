"""Encoders: typed pipeline results -> highdicom objects, one module per object kind.

* :mod:`workers.encode.sr`: NM results -> TID 1500 Measurement Report
  (:func:`workers.encode.sr.encode_nm_sr`).
* :mod:`workers.encode.sr_ct`: CT lung lesions -> TID 1500 Measurement Report
  (:func:`workers.encode.sr_ct.encode_ct_sr`), one volumetric group per lesion.
* :mod:`workers.encode.seg`: CT lung lesions -> Segmentation over the source CT's
  own geometry, one segment per lesion (:func:`workers.encode.seg.encode_ct_seg`).
* :mod:`workers.encode.sc`: a Grad-CAM heatmap -> Secondary Capture, one per NM
  diagnosis (:func:`workers.encode.sc.encode_heatmap_sc`) or per CT lesion
  (:func:`workers.encode.sc.encode_lesion_sc`), pixels drawn by
  :mod:`workers.encode.heatmap_render`.
* :mod:`workers.encode.seg_us`, :mod:`workers.encode.sr_us`, :mod:`workers.encode.sc_us`: US
  thyroid nodules -> one Segmentation per image with nodules, a TID 1500 Measurement Report
  with one planar group per nodule, one heatmap Secondary Capture per nodule.
* :mod:`workers.encode.uids`: deterministic UIDs, so that a re-run replaces.
* :mod:`workers.encode.codes`: every coded concept written, with its source.
* :mod:`workers.encode.common`: equipment, pinned times, series descriptions.

The modules are not imported here: a caller that needs only UIDs does not pay
for matplotlib and Pillow.
"""
