"""Encoders: typed pipeline results -> highdicom objects, one module per object kind.

* :mod:`workers.encode.sr`: NM results -> TID 1500 Measurement Report
  (:func:`workers.encode.sr.encode_nm_sr`).
* :mod:`workers.encode.sc`: one NM diagnosis' Grad-CAM -> Secondary Capture
  (:func:`workers.encode.sc.encode_heatmap_sc`), pixels drawn by
  :mod:`workers.encode.heatmap_render`.
* :mod:`workers.encode.uids`: deterministic UIDs, so that a re-run replaces.
* :mod:`workers.encode.codes`: every coded concept written, with its source.
* :mod:`workers.encode.common`: equipment, pinned times, series descriptions.

The modules are not imported here: a caller that needs only UIDs does not pay
for matplotlib and Pillow.
"""
