"""The Celery app: one queue per resource (nm, ct, us for inference; export for sending)."""

from __future__ import annotations

from celery import Celery

from config.settings import QUEUES, Settings

INFER_TASK = "thyroid.infer"
EXPORT_TASK = "thyroid.export"


def create_app(settings: Settings) -> Celery:
    """A Celery app bound to ``settings`` (reachable from tasks as ``self.app.node_settings``).

    With no ``broker_url`` it uses kombu's SQLAlchemy transport on SQLite under the data
    directory: no server to install, and queued work survives a restart.
    """
    if settings.embedded_broker:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("thyroid_node", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # a task lost with its worker is delivered again
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long GPU tasks: take one at a time
        task_ignore_result=True,  # results live in the spool, not in a result backend
        task_serializer="json",
        accept_content=["json"],
        task_default_queue="export",
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options=(
            # kombu's SQLAlchemy transport hands its options to create_engine(): SQLite may wait for its lock
            {"connect_args": {"timeout": 30}}
            if settings.embedded_broker
            # long GPU tasks with acks_late: redeliver only after 4 h unacknowledged
            else {"visibility_timeout": 4 * 3600}
        ),
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.node_settings = settings  # type: ignore[attr-defined]
    from workers import tasks  # registers the tasks on this app

    tasks.register(app)
    return app


def all_queues() -> list[str]:
    return list(QUEUES)
