"""The duplicate ledger's key: what makes a study's result the same as one already sent."""

from __future__ import annotations

from config.settings import Destination
from workers.infer import ledger_salt


def _dest(**kw: object) -> Destination:
    return Destination.model_validate({"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104, **kw})


def test_the_key_changes_with_models_destinations_and_what_they_accept() -> None:
    base = ledger_salt("nm_thyroid_dx", ["nm_thyroid_dx:1.0"], [_dest()])
    assert base == "nm_thyroid_dx|nm_thyroid_dx:1.0|PACS@127.0.0.1:104"  # as before `accepts` existed
    assert ledger_salt("nm_thyroid_dx", ["nm_thyroid_dx:1.1"], [_dest()]) != base
    assert ledger_salt("nm_thyroid_dx", ["nm_thyroid_dx:1.0"], [_dest(port=105)]) != base
    only_sc = ledger_salt("nm_thyroid_dx", ["nm_thyroid_dx:1.0"], [_dest(accepts=["sc"])])
    assert only_sc != base
    assert ledger_salt("nm_thyroid_dx", ["nm_thyroid_dx:1.0"], [_dest(accepts=["sr", "sc"])]) == \
        ledger_salt("nm_thyroid_dx", ["nm_thyroid_dx:1.0"], [_dest(accepts=["sc", "sr"])])
