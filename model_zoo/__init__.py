"""Model zoo of the Thyroid AI Node: networks, bundles, model cards, phantoms and demo weights."""
