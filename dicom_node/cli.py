"""``thyroid-node``: the node's one command line.

serve         listener + completeness sweeper (+ embedded workers when no broker is set)
worker        a Celery worker for given queues (GPU hosts run this)
check-config  validate a config file and print the effective settings
route         --dry-run DIR: which rule each study in a folder would take
replay        run a pipeline on a folder of DICOM files, write the outputs as .dcm (no broker, no network)
models        list | verify [PATH] | install PATH: the model bundles, checked (card, sha256)
train         MODEL --data DIR --out BUNDLE: train a zoo model on a site's labelled studies
phantoms      MODEL --out DIR: a labelled phantom folder (known truth) to try train and validate on
validate      MODEL --data DIR: the papers' statistics on a site's labelled studies (HTML + JSON)
build-demo    train the phantom demo weights of a zoo model into the cache
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from config.settings import ConfigError, Settings, load_settings

log = logging.getLogger("thyroid_node")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


# ----------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.receive import build_ae
    from dicom_node.route import Route
    from dicom_node.spool import Spool
    from dicom_node.sweep import Sweeper
    from workers.celery_app import INFER_TASK, create_app

    settings = _settings(args)
    _setup_logging(settings.log_level)
    spool = Spool(settings.spool_dir)
    app = create_app(settings)

    def dispatch(job_id: str, r: Route) -> None:
        app.send_task(INFER_TASK, args=[job_id, r.name], queue=r.queue)

    worker_cmds: list[list[str]] = []
    if settings.embedded_broker and not args.no_workers:
        # No broker server: run the workers here, one for inference, one for export,
        # so a long inference never holds results back from the PACS.
        for queues in ("nm,ct,us", "export"):
            cmd = [sys.executable, "-m", "dicom_node.cli", "worker", "--queues", queues]
            if args.config:
                cmd += ["--config", str(args.config)]
            worker_cmds.append(cmd)
    children = [subprocess.Popen(cmd) for cmd in worker_cmds]
    started = [time.monotonic() for _ in children]
    if children:
        log.info("embedded broker %s; started %d worker processes", settings.effective_broker_url, len(children))

    from model_zoo.manage import status as bundle_status

    for st in bundle_status(settings.models):  # checked again by the workers when they load them
        if st.ok:
            log.info("model %s: bundle %s OK", st.name, st.path)
        elif st.location == "demo":
            log.warning("model %s: demo bundle not built yet; the first study builds it (minutes): run 'thyroid-node build-demo'", st.name)
        else:
            log.error("model %s: %s; studies routed to it will fail until this is fixed", st.name, st.error)
    if not settings.destinations:
        log.warning("no destinations configured: results stay in %s", settings.spool_dir / "done")

    ae, handlers = build_ae(settings, spool)
    sweeper = Sweeper(spool, settings, dispatch)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = ae.start_server((settings.bind_address, settings.port), block=False, evt_handlers=handlers)
    assert server is not None  # block=False returns the server
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.bind_address)
        log.info("Prometheus metrics on %s:%d/metrics", settings.bind_address, settings.metrics_port)
    sweeper.start()
    log.info("listening as %s on %s:%d; spool %s", settings.ae_title, settings.bind_address, settings.port, settings.spool_dir)
    try:
        while not stop.wait(1.0):
            for i, child in enumerate(children):
                # A worker that dies (out of memory on one study, a crash) is restarted; the
                # listener goes on receiving. At most one restart per worker every 10 s.
                if child.poll() is not None and time.monotonic() - started[i] >= 10:
                    log.error("worker process %d exited (%s); restarting it", child.pid, child.returncode)
                    children[i] = subprocess.Popen(worker_cmds[i])
                    started[i] = time.monotonic()
    finally:
        server.shutdown()
        sweeper.stop()
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        log.info("stopped")
    return 0


# ---------------------------------------------------------------------------- worker
def cmd_worker(args: argparse.Namespace) -> int:
    from workers.celery_app import create_app

    settings = _settings(args)
    _setup_logging(settings.log_level)
    app = create_app(settings)
    argv = ["worker", "-Q", args.queues, "--pool", "solo", "--loglevel", settings.log_level,
            "-n", f"thyroid-{args.queues.replace(',', '-')}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    app.worker_main(argv)
    return 0


# ---------------------------------------------------------------------- check-config
def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    print(f"OK: configuration valid (broker: {'embedded ' + settings.effective_broker_url if settings.embedded_broker else settings.broker_url})")
    return 0


# ------------------------------------------------------------------- route --dry-run
def _manifests_of_folder(folder: Path) -> tuple[dict[str, object], dict[str, list[Path]]]:
    from dicom_node.headers import read_meta
    from dicom_node.spool import SeriesInfo, StudyManifest

    manifests: dict[str, StudyManifest] = {}
    files: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        meta = read_meta(path)
        if meta is None:
            continue
        m = manifests.setdefault(meta.study_instance_uid, StudyManifest(meta.study_instance_uid))
        s = m.series.setdefault(meta.series_instance_uid, SeriesInfo(meta.modality, meta.sop_class_uid, meta.body_part, meta.series_description))
        s.instances.append(meta.sop_instance_uid)
        files[meta.series_instance_uid].append(path)
    return manifests, files  # type: ignore[return-value]


def cmd_route(args: argparse.Namespace) -> int:
    from dicom_node.route import explain_no_route, route
    from dicom_node.uids import study_key

    settings = _settings(args)
    manifests, _ = _manifests_of_folder(Path(args.dir))
    if not manifests:
        print(f"no readable DICOM files under {args.dir}")
        return 1
    for uid, m in manifests.items():
        routes = route(m, settings.routes)  # type: ignore[arg-type]
        print(f"study {study_key(uid)} ({m.instance_count} instances):")  # type: ignore[attr-defined]
        if not routes:
            print(f"  ignored: {explain_no_route(m, settings.routes)}")  # type: ignore[arg-type]
        for r in routes:
            print(f"  rule {r.name} -> pipeline {r.pipeline} on queue {r.queue} ({len(r.series)} series)")
    return 0


# ---------------------------------------------------------------------------- replay
def cmd_replay(args: argparse.Namespace) -> int:
    from datetime import datetime

    from pydicom import dcmread

    from dicom_node.route import route
    from workers.infer import encode_files, get_pipeline, pipeline_models
    from workers.models import load_models

    settings = _settings(args)
    _setup_logging(settings.log_level)
    manifests, files = _manifests_of_folder(Path(args.in_dir))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for m in manifests.values():
        if args.pipeline:
            plan = [(args.pipeline, list(m.series))]  # type: ignore[attr-defined]
        else:
            plan = [(r.pipeline, list(r.series)) for r in route(m, settings.routes)]  # type: ignore[arg-type]
        if not plan:
            log.info("a study matched no rule; skipped (use --pipeline to force one)")
        for pipeline_name, series in plan:
            pipeline = get_pipeline(pipeline_name)
            models = load_models(pipeline_models(pipeline, settings), settings)
            companions = {c.upper() for c in getattr(pipeline, "COMPANION_MODALITIES", ())}
            series += [uid for uid, info in sorted(m.series.items())  # type: ignore[attr-defined]
                       if info.modality.upper() in companions and uid not in series]
            sources = [dcmread(p) for s in series for p in files[s]]
            objects = pipeline.process(sources, models, datetime.now().replace(microsecond=0), settings)
            for name, data in encode_files(objects).items():
                (out / name).write_bytes(data)
                written += 1
    print(f"wrote {written} object(s) to {out}")
    return 0


# ---------------------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    from model_zoo import manage
    from model_zoo.errors import BundleError

    settings = _settings(args)
    if args.action == "install":
        if not args.path:
            print("thyroid-node models install PATH", file=sys.stderr)
            return 2
        try:
            target = manage.install(Path(args.path), settings.data_dir / "bundles", force=args.force)
        except BundleError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        print(f"installed at {target}\nto use it, set in the config:\n  models:\n    {target.name.rsplit('-', 1)[0]}: {target}")
        return 0
    models = dict(settings.models)
    if args.action == "verify" and args.path:
        models = {"(given)": str(args.path)}
    failed = 0
    for st in manage.status(models):
        if st.bundle is not None:
            card = st.bundle.card
            if st.name == "(given)":
                print(f"OK   {card.ident}{'  DEMO - not for clinical use' if card.demo else ''}  {st.path}")
            else:
                print(f"OK   {st.name}: {card.version}{'  DEMO - not for clinical use' if card.demo else ''}  {st.path}")
        else:
            failed += 1
            print(f"FAIL {st.name}: {st.error}")
    return 1 if failed and args.action == "verify" else 0


# ----------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    """Train a zoo model on a site's labelled folder into a bundle (then validate, then install)."""
    from model_zoo import site_training
    from model_zoo.bundle import load_bundle
    from model_zoo.errors import ModelZooError

    _setup_logging("INFO")
    if args.model not in site_training.TRAINERS:
        print(f"thyroid-node: no training for {args.model!r}; known: {', '.join(site_training.TRAINERS)}",
              file=sys.stderr)
        return 2
    started = time.monotonic()

    def show(frac: float, msg: str) -> None:
        print(f"[{100 * frac:5.1f}%] {time.monotonic() - started:6.1f} s  {msg}", flush=True)

    opts = site_training.TrainOptions(
        data_dir=Path(args.data), out_dir=Path(args.out), version=args.version, epochs=args.epochs, seed=args.seed,
        holdout=args.holdout, folds=args.folds, resume=args.resume, device=args.device, progress=show)
    try:
        out = site_training.train(args.model, opts)
        card = load_bundle(out).card
    except ModelZooError as exc:
        print(f"thyroid-node: {exc}", file=sys.stderr)
        return 1
    print(f"bundle {card.ident} written to {out} in {time.monotonic() - started:.0f} s; held-out: "
          f"{json.dumps(card.reported_performance.get('heldout', card.reported_performance))}\n"
          f"Next: thyroid-node validate {card.name} --data DIR --bundle {out}, then thyroid-node models install {out}")
    return 0


def cmd_phantoms(args: argparse.Namespace) -> int:
    """Write a labelled phantom folder (known truth) in the layout train and validate read."""
    from model_zoo import site_training
    from model_zoo.errors import ModelZooError

    _setup_logging("WARNING")
    try:
        folder = site_training.write_phantoms(args.model, Path(args.out), args.n, args.seed)
    except ModelZooError as exc:
        print(f"thyroid-node: {exc}", file=sys.stderr)
        return 2
    print(f"phantom studies for {args.model} with labels.csv in {folder} (synthetic: not patient data)")
    return 0


# -------------------------------------------------------------------------- validate
def _bundle_location(location: str, name: str) -> Path:
    from model_zoo.demo import ensure_demo_bundle

    return ensure_demo_bundle(name) if location == "demo" else Path(location)


def cmd_validate(args: argparse.Namespace) -> int:
    """Run a model over a labelled folder; write the papers' statistics as report.json + report.html."""
    from model_zoo.errors import ModelZooError
    from model_zoo.validation.collect import COLLECTORS
    from model_zoo.validation.report import binary_report, multiclass_report, segmentation_report, write_report

    settings = _settings(args)
    _setup_logging("WARNING")
    if args.model not in COLLECTORS:
        print(f"thyroid-node: no validation for {args.model!r}; known: {', '.join(sorted(COLLECTORS))}", file=sys.stderr)
        return 2
    location = args.bundle or settings.models.get(args.model)
    if not location:
        print(f"thyroid-node: no bundle for {args.model}: pass --bundle PATH or set models.{args.model}", file=sys.stderr)
        return 2
    collect = COLLECTORS[args.model]
    try:
        got = collect(_bundle_location(str(location), args.model), Path(args.data))
        other = collect(_bundle_location(str(args.compare), args.model), Path(args.data)) if args.compare else None
    except ModelZooError as exc:
        print(f"thyroid-node: {exc}", file=sys.stderr)
        return 1
    if got.segmentation is not None:
        seg = got.segmentation
        report = segmentation_report(got.model, got.version, seg["nodules"], images=seg["images"],
                                     false_positives=seg["false_positives"], match_dice=seg["match_dice"],
                                     studies=seg.get("studies"))
        if other is not None and other.segmentation is not None:
            o = other.segmentation
            summary = segmentation_report(other.model, other.version, o["nodules"], images=o["images"],
                                          false_positives=o["false_positives"], match_dice=o["match_dice"])
            report["comparison"] = {"name_b": f"{other.model} {other.version}",
                                    **{k: summary[k] for k in ("sensitivity", "false_positives_per_image", "dice")}}
        report["demo"] = got.demo
        json_path, html_path = write_report(report, Path(args.out))
        print(f"{got.model} {got.version}: {report['nodules']} outlined nodule(s) on {report['images']} image(s), "
              f"{report['found']} found, mean Dice {report['dice']['mean'] or 0:.3f}; report: {html_path} and {json_path}")
        return 0
    if len(got.y_true) == 0:
        found = f" (detection: {json.dumps(got.detection)})" if got.detection is not None else ""
        print(f"thyroid-node: {got.model} {got.version} gave no prediction to compare with a label{found}; "
              "no figures to report", file=sys.stderr)
        return 1
    if got.probabilities.ndim == 2:
        report = multiclass_report(got.model, got.version, [got.labels[i] for i in got.y_true], got.probabilities,
                                   list(got.labels))
    else:
        compare = (f"{other.model} {other.version}", other.probabilities) if other is not None else None
        if other is not None and len(other.probabilities) != len(got.probabilities):
            print("thyroid-node: the two bundles matched different lesions; no paired comparison", file=sys.stderr)
            compare = None
        report = binary_report(got.model, got.version, got.y_true, got.probabilities, got.threshold or 0.5,
                               sizes_mm=got.sizes_mm, compare=compare)
    report["demo"] = got.demo
    if got.detection is not None:
        report["detection"] = got.detection
    if got.extra:
        report.update(got.extra)
    json_path, html_path = write_report(report, Path(args.out))
    print(f"{got.model} {got.version}: {len(got.y_true)} case(s); report: {html_path} and {json_path}")
    return 0


# ------------------------------------------------------------------------ build-demo
def cmd_build_demo(args: argparse.Namespace) -> int:
    from model_zoo.demo import DEMO_MINUTES, DEMO_RECIPES, ensure_demo_bundle

    _setup_logging("INFO")
    started = time.monotonic()
    names = args.models or list(DEMO_RECIPES)
    print(f"demo weights for {', '.join(names)}: built once and cached (first build about "
          f"{sum(DEMO_MINUTES.get(n, 5.0) for n in names):.0f} minutes on 2 CPU cores)", flush=True)
    for name in names:
        path = ensure_demo_bundle(name)
        print(f"{name}: demo bundle ready at {path}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thyroid-node", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, default=os.environ.get("THYROID_NODE_CONFIG"), help="YAML config file (default: $THYROID_NODE_CONFIG, else built-in defaults)")
        p.set_defaults(func=func)
        return p

    p = add("serve", cmd_serve, "run the DICOM listener and the completeness sweeper")
    p.add_argument("--no-workers", action="store_true", help="with the embedded broker, do not start worker processes")
    p = add("worker", cmd_worker, "run a Celery worker")
    p.add_argument("--queues", default="nm,ct,us,export", help="comma-separated queues (nm, ct, us, export)")
    add("check-config", cmd_check_config, "validate the configuration")
    p = add("route", cmd_route, "show which rule each study in a folder would take")
    p.add_argument("--dry-run", dest="dir", required=True, metavar="DIR")
    p = add("replay", cmd_replay, "run a pipeline on a folder of DICOM files, no broker, no network")
    p.add_argument("--in", dest="in_dir", required=True, metavar="DIR")
    p.add_argument("--out", dest="out_dir", required=True, metavar="DIR")
    p.add_argument("--pipeline", default=None)
    p = add("models", cmd_models, "list, verify or install model bundles")
    p.add_argument("action", choices=["list", "verify", "install"])
    p.add_argument("path", nargs="?", help="a bundle folder (verify, install)")
    p.add_argument("--force", action="store_true", help="install: replace the same name and version")
    p = add("train", cmd_train, "train a zoo model on a site's labelled studies into a bundle")
    p.add_argument("model", help="zoo key (thyroid-node models list)")
    p.add_argument("--data", required=True, metavar="DIR", help="DICOM files and labels.csv (docs/validation.md)")
    p.add_argument("--out", required=True, metavar="BUNDLE_DIR")
    p.add_argument("--version", default="1.0.0-site", help="the bundle's version (appears in every output)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's recipe)")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the initialisation and the augmentation")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of studies per class held out")
    p.add_argument("--folds", type=int, default=0, help="k-fold cross-validation by study before the final fit (0: none)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p = add("phantoms", cmd_phantoms, "write a labelled phantom folder (synthetic, known truth) to try train/validate")
    p.add_argument("model", help="zoo key")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--n", type=int, default=12, help="number of studies")
    p.add_argument("--seed", type=int, default=9000)
    p = add("validate", cmd_validate, "run a model over labelled studies; the papers' statistics as HTML + JSON")
    p.add_argument("model", help="zoo key: nm_thyroid_dx, ct_lung_met_rai, nm_graves_i131, us_nodule_seg, "
                                 "us_calcified_nodule or us_lvlnm")
    p.add_argument("--data", required=True, metavar="DIR", help="DICOM files and labels.csv (see docs/validation.md)")
    p.add_argument("--bundle", default=None, help="bundle folder or 'demo' (default: the configured one)")
    p.add_argument("--compare", default=None, metavar="BUNDLE", help="a second bundle (or version): paired DeLong test")
    p.add_argument("--out", default="validation-report", metavar="DIR")
    p = add("build-demo", cmd_build_demo, "train the demo (phantom) weights into the cache")
    p.add_argument("models", nargs="*", help="zoo keys (default: every model with a demo recipe)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"thyroid-node: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
