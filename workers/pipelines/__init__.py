"""Modality pipelines: plain ``run(study, models) -> Results`` functions, one module each."""
