"""Prometheus metrics of the listener process (``metrics_port`` in the settings; 0: off)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

STORES = Counter("thyroid_node_cstore_total", "C-STORE requests answered, by status", ["status"])
BYTES_STORED = Counter("thyroid_node_stored_bytes_total", "Bytes of instances written to the spool")
STUDIES_COMPLETED = Counter("thyroid_node_studies_completed_total", "Studies closed by the completeness sweeper")
STUDIES_IGNORED = Counter("thyroid_node_studies_ignored_total", "Complete studies that no routing rule took")
DISPATCH_ERRORS = Counter("thyroid_node_dispatch_errors_total", "Failed hand-overs to the broker (retried)")
INCOMING = Gauge("thyroid_node_incoming_studies", "Studies being received (not yet complete)")
