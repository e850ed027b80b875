"""The ``openmme`` command line.

    openmme serve   [--model-prefix s3://bucket/prefix/] [--endpoint-name NAME] [--port 8080] …
    openmme demo    [--keep-running]           embedded S3 + sample models + endpoint + real invocations
    openmme publish training-job JOB [JOB …] --prefix s3://… [--name NAME] [--overwrite]
    openmme publish path LOCAL --prefix s3://… --name NAME [--sample rows.csv] [--skip-check] [--overwrite]
    openmme publish samples --prefix s3://…    the quick start's sample models
    openmme models list --prefix s3://…        the TargetModel names a prefix holds
    openmme models remove NAME --prefix s3://…
    openmme router-config --replica HOST:PORT [--replica …] [--hot NAME …]   nginx.conf for several replicas

``serve`` also runs as a bare ``serve`` (the container entrypoint SageMaker calls).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openmme.publish import ProgressLine

__all__ = ["main"]


def _serve(argv: Sequence[str]) -> int:
    from openmme.endpoint.server import serve
    from openmme.endpoint.settings import Settings

    serve(Settings.from_sources(argv))
    return 0


def _progress() -> ProgressLine | None:
    from openmme.publish import ProgressLine

    # A redrawn line only makes sense on a terminal; in logs and pipes the final "published" line says it all.
    return ProgressLine(sys.stderr) if sys.stderr.isatty() else None


def _publish(args: argparse.Namespace) -> int:
    from openmme.publish import PublishError

    try:
        if args.what == "training-job":
            return _publish_training_jobs(args)
        if args.what == "path":
            return _publish_path(args)
        return _publish_samples(args)
    except PublishError as exc:
        print(f"openmme publish: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # boto3 aborts the multipart upload or copy it was running, so nothing is left half-written.
        print("openmme publish: interrupted; the transfer in progress was aborted", file=sys.stderr)
        return 130


def _publish_training_jobs(args: argparse.Namespace) -> int:
    from openmme.publish import TrainingJobError, publish_training_job, publish_training_jobs, target_model_for

    if args.name is not None:
        publication = publish_training_job(
            args.jobs[0],
            args.prefix,
            target_model=target_model_for(args.name),
            overwrite=args.overwrite,
            progress=_progress(),
        )
        print(f"published training job {args.jobs[0]} as {publication.uri}\nTargetModel: {publication.target_model}")
        return 0
    outcomes = publish_training_jobs(args.jobs, args.prefix, overwrite=args.overwrite, progress=_progress())
    for outcome in outcomes:
        if outcome.publication is not None:
            print(f"published training job {outcome.job_name} as {outcome.publication.uri}")
            print(f"TargetModel: {outcome.publication.target_model}")
        elif isinstance(outcome.error, TrainingJobError):
            print(f"openmme publish: {outcome.error}", file=sys.stderr)
        else:
            print(f"openmme publish: training job {outcome.job_name!r}: {outcome.error}", file=sys.stderr)
    failed = sum(outcome.error is not None for outcome in outcomes)
    if failed and len(outcomes) > 1:
        print(f"openmme publish: {failed} of {len(outcomes)} training jobs were not published", file=sys.stderr)
    return 1 if failed else 0


def _publish_path(args: argparse.Namespace) -> int:
    from openmme.publish import ModelCheckFailed, publish_path, target_model_for
    from openmme.publish.check import content_type_for

    sample = None
    if args.sample is not None:
        try:
            sample = args.sample.read_bytes()
        except OSError as exc:
            raise ModelCheckFailed(f"cannot read the sample {args.sample}: {exc}") from exc
    publication = publish_path(
        args.local,
        args.prefix,
        target_model_for(args.name),
        overwrite=args.overwrite,
        check=not args.skip_check,
        sample=sample,
        sample_content_type=args.sample_content_type or (content_type_for(args.sample) if args.sample else "text/csv"),
        hosting=args.hosting,
        progress=_progress(),
    )
    if publication.check is not None:
        for warning in publication.check.warnings:
            print(f"openmme publish: warning: {warning}", file=sys.stderr)
        print(f"checked {args.local}: {publication.check.summary()}")
    print(f"published {publication.uri}\nTargetModel: {publication.target_model}")
    return 0


def _publish_samples(args: argparse.Namespace) -> int:
    from openmme.publish import create_bucket, publish_archive
    from openmme.publish.samples import SAMPLES, sample_archive, train_booster

    if args.create_bucket:
        create_bucket(args.prefix)
    for sample in SAMPLES:
        archive = sample_archive(train_booster(sample.objective, sample.seed))
        publish_archive(archive, args.prefix, sample.target_model, overwrite=args.overwrite)
        print(f"published {sample.target_model} ({sample.objective})")
    return 0


def _models(args: argparse.Namespace) -> int:
    from openmme.publish import PublishError, list_models, remove_model

    try:
        if args.action == "remove":
            size = remove_model(args.prefix, args.name)
            print(
                f"removed {args.prefix.rstrip('/')}/{args.name} ({size} bytes); endpoints that loaded it keep "
                "serving their cached copy until they evict it"
            )
            return 0
        listed = 0
        for model in list_models(args.prefix):
            print(f"{model.target_model}\t{model.size}\t{model.last_modified.isoformat()}")
            listed += 1
        if not listed:
            print(f"openmme models: {args.prefix} holds no models", file=sys.stderr)
    except PublishError as exc:
        print(f"openmme models: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from openmme.demo import run_demo

    try:
        return run_demo(keep_running=args.keep_running, port=args.port, workdir=args.workdir)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the end: everything it started is stopped by now
        print("openmme demo: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # SeaweedFS or the endpoint did not come up; its log is kept and named
        print(f"openmme demo: {exc}", file=sys.stderr)
        return 1


def _router_config(args: argparse.Namespace) -> int:
    from openmme.router import RouterOptions, nginx_config

    options = RouterOptions(
        listen=args.listen,
        worker_processes=args.worker_processes,
        hot_models=tuple(args.hot),
        hot_spread=args.hot_spread,
        tries=args.tries or len(args.replica),
    )
    try:
        sys.stdout.write(nginx_config(args.replica, options))
    except ValueError as exc:
        print(f"openmme router-config: {exc}", file=sys.stderr)
        return 2
    return 0


def version() -> str:
    """The installed openmme's version, from its package metadata."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("openmme")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="openmme", description="A self-hosted SageMaker multi-model endpoint.")
    root.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the endpoint (all flags: openmme serve --help)", add_help=False)

    demo = commands.add_parser("demo", help="embedded S3 + sample models + endpoint + real invocations")
    demo.add_argument("--keep-running", action="store_true", help="leave the endpoint up until Ctrl-C")
    demo.add_argument("--port", type=int, default=0, help="endpoint port (default: 8080 if free)")
    demo.add_argument("--workdir", type=Path, default=None, help="where the demo keeps its files")

    publish = commands.add_parser("publish", help="put models into an endpoint's S3 prefix")
    what = publish.add_subparsers(dest="what", required=True)
    jobs = what.add_parser(
        "training-job",
        help="copy SageMaker training jobs' model.tar.gz into the prefix, as <job>/model.tar.gz",
        description="For each job: DescribeTrainingJob, then a server-side S3 copy of its model artifact to "
        "<prefix><NAME>/model.tar.gz. A job that cannot be published does not stop the others; the exit code is "
        "1 if any failed.",
    )
    jobs.add_argument("jobs", nargs="+", metavar="JOB", help="training job name")
    jobs.add_argument("--name", help="publish as NAME/model.tar.gz (or NAME, if it ends in .tar.gz); one job only")
    path = what.add_parser(
        "path",
        help="a model.tar.gz, a model directory or a model file: packed, checked, uploaded",
        description="Packs LOCAL (a directory's contents, or a bare model file, at the archive root), checks it "
        "by loading it with the handler openmme will use, and uploads it to <prefix><NAME>/model.tar.gz.",
    )
    path.add_argument("local", type=Path, metavar="LOCAL")
    path.add_argument("--name", required=True, help="NAME/model.tar.gz is the TargetModel (NAME if it ends in .tar.gz)")
    path.add_argument("--sample", type=Path, help="request rows to predict on as part of the check (e.g. rows.csv)")
    path.add_argument("--sample-content-type", help="the sample's Content-Type (default: from its suffix, else CSV)")
    path.add_argument("--skip-check", action="store_true", help="upload without loading the model here first")
    path.add_argument(
        "--hosting",
        choices=("dense", "isolated"),
        help='write openmme.json {"hosting": ...} into the archive: where this model runs, whatever the endpoint\'s'
        " --hosting (user scripts always run isolated)",
    )
    samples = what.add_parser("samples", help="train and publish the quick start's sample models")
    samples.add_argument("--create-bucket", action="store_true", help="create the prefix's bucket if missing")
    for sub in (jobs, path, samples):
        sub.add_argument("--prefix", required=True, help="the endpoint's model prefix, s3://bucket/prefix/")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing artifact")

    models = commands.add_parser("models", help="what an endpoint's prefix holds")
    action = models.add_subparsers(dest="action", required=True)
    listing = action.add_parser("list", help="TargetModel, size and last-modified of every model (tab-separated)")
    remove = action.add_parser("remove", help="delete one model from the prefix")
    remove.add_argument("name", metavar="NAME", help="the TargetModel, as `openmme models list` shows it")
    for sub in (listing, remove):
        sub.add_argument("--prefix", required=True, help="the endpoint's model prefix, s3://bucket/prefix/")

    router = commands.add_parser(
        "router-config",
        help="print an nginx.conf that routes each TargetModel to one of several replicas (consistent hashing)",
    )
    router.add_argument("--replica", action="append", required=True, metavar="HOST:PORT", help="an openmme replica")
    router.add_argument("--listen", default="8080", help="nginx's listen address (default: 8080)")
    router.add_argument("--worker-processes", default="auto", help="nginx worker_processes (default: auto)")
    router.add_argument("--hot", action="append", default=[], metavar="NAME", help="a TargetModel to spread out")
    router.add_argument("--hot-spread", type=int, default=2, help="replicas a hot model spreads over (default: 2)")
    router.add_argument("--tries", type=int, default=0, help="replicas one request may try (default: all)")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        return _serve(argv[1:])
    root = parser()
    args = root.parse_args(argv)
    if args.command == "publish" and args.what == "training-job" and args.name is not None and len(args.jobs) > 1:
        root.error("--name applies to a single training job")
    if args.command == "publish":
        return _publish(args)
    if args.command == "models":
        return _models(args)
    if args.command == "router-config":
        return _router_config(args)
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
