"""The ``openmme`` command line.

    openmme serve   [--model-prefix s3://bucket/prefix/] [--endpoint-name NAME] [--port 8080] …
    openmme demo    [--keep-running]           embedded S3 + sample models + endpoint + real invocations
    openmme publish training-job JOB [JOB …] --prefix s3://… [--name NAME] [--overwrite]
    openmme publish path LOCAL --prefix s3://… --name NAME [--sample rows.csv] [--skip-check] [--overwrite]
    openmme publish samples --prefix s3://…    the quick start's sample models
    openmme models list --prefix s3://…        the TargetModel names a prefix holds
    openmme models remove NAME --prefix s3://…
    openmme router-config --replica HOST:PORT [--replica …] [--hot NAME …]   nginx.conf for several replicas
    openmme alias set ALIAS VERSION[=PERCENT] … --prefix s3://…   point an alias at versions (and a shadow)
    openmme alias show|history ALIAS --prefix s3://…   /   openmme alias list --prefix s3://…
    openmme alias remove|rollback ALIAS --prefix s3://… [--to VERSION]
    openmme rollout start ALIAS VERSION --prefix s3://… --endpoint URL …   a guarded canary, to the end
    openmme rollout status|promote|rollback ALIAS --prefix s3://…
    openmme pipeline publish NAME.pipeline.json STEP STEP … --model-prefix s3://… --sample rows.csv
                                               check a pipeline end to end (an endpoint of its own), then upload it
    openmme pipeline show NAME.pipeline.json --model-prefix s3://…   its steps, and what each names in the prefix
    openmme transform --target-model NAME --input s3://… --output s3://… (--endpoint-url URL | --model-prefix s3://…)
                                               batch transform: CreateTransformJob against one TargetModel

``serve`` also runs as a bare ``serve`` (the container entrypoint SageMaker calls).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openmme.endpoint.alias_state import AliasDocument
    from openmme.publish import ProgressLine

__all__ = ["main"]


def _serve(argv: Sequence[str]) -> int:
    from openmme.endpoint.supervisor import run_supervised

    # Forked before anything is imported or started: the supervisor stays small, and the front starts as it did.
    return run_supervised(lambda: _serve_front(argv))


def _serve_front(argv: Sequence[str]) -> int:
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
        from openmme.publish.aliases import list_aliases

        listed = 0
        for model in list_models(args.prefix):
            print(f"{model.target_model}\t{model.size}\t{model.last_modified.isoformat()}")
            listed += 1
        if not listed:
            print(f"openmme models: {args.prefix} holds no models", file=sys.stderr)
        # The aliases after the archives, marked so that a script reading TargetModels can tell them apart.
        for document in list_aliases(args.prefix):
            print(f"{document.alias}\talias\t{document.summary()}")
    except PublishError as exc:
        print(f"openmme models: {exc}", file=sys.stderr)
        return 1
    return 0


def _alias(args: argparse.Namespace) -> int:
    from openmme.publish import PublishError
    from openmme.publish import aliases as library

    try:
        if args.action == "set":
            return _alias_set(args)
        if args.action == "list":
            for document in library.list_aliases(args.prefix):
                print(f"{document.alias}\t{document.generation}\t{document.summary()}")
            return 0
        if args.action == "history":
            for document in library.alias_history(args.prefix, args.alias, limit=args.limit):
                print(_history_line(document))
            return 0
        if args.action == "show":
            _print_alias(library.get_alias(args.prefix, args.alias))
            return 0
        if args.action == "remove":
            done = library.remove_alias(
                args.prefix, args.alias, reason=args.reason, expect_generation=args.expect_generation
            )
            print(f"removed alias {args.alias} (generation {done.generation}); its history stays")
            return 0
        done = library.rollback_alias(
            args.prefix, args.alias, args.to, reason=args.reason, expect_generation=args.expect_generation
        )
        _print_moved(done)
        return 0
    except PublishError as exc:
        print(f"openmme alias: {exc}", file=sys.stderr)
        return 1


def _alias_set(args: argparse.Namespace) -> int:
    from openmme.publish import ModelCheckFailed
    from openmme.publish.aliases import AliasRefused, ShadowSpec, VersionSpec, set_alias
    from openmme.publish.check import content_type_for

    names = args.names.split(",") if args.names else []
    if names and len(names) != len(args.versions):
        raise AliasRefused(f"--names gives {len(names)} names for {len(args.versions)} versions")
    versions = [VersionSpec.parse(text, names[index] if names else None) for index, text in enumerate(args.versions)]
    sample = None
    if args.sample is not None:
        try:
            sample = args.sample.read_bytes()
        except OSError as exc:
            raise ModelCheckFailed(f"cannot read the sample {args.sample}: {exc}") from exc
    done = set_alias(
        args.prefix,
        args.alias,
        versions,
        shadow=ShadowSpec.parse(args.shadow, args.shadow_name) if args.shadow else None,
        sticky=args.sticky,
        reason=args.reason,
        expect_generation=args.expect_generation,
        check=not args.skip_check,
        sample=sample,
        sample_content_type=args.sample_content_type or (content_type_for(args.sample) if args.sample else "text/csv"),
    )
    _print_moved(done)
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from openmme.publish import PublishError
    from openmme.publish import rollout as library

    try:
        if args.action == "start":
            return _rollout_start(args)
        if args.action == "status":
            status = library.rollout_status(args.prefix, args.alias, args.endpoint)
            if not status["rollout"]:
                print(f"no rollout of {args.alias} is in progress (generation {status['generation']})")
                return 0
            print(f"rollout of {args.alias}: {_rollout_line(status['rollout'])}")
            for role in ("live", "canary"):
                if role in status:
                    figures = status[role]
                    print(
                        f"  {role:<6} {figures['requests']} requests, {figures['errors']} errors"
                        f" ({figures['error_rate']:.1%}), p99 {figures['p99_ms']} ms (cumulative, all endpoints)"
                    )
            return 0
        if args.action == "promote":
            done = library.promote_rollout(args.prefix, args.alias, reason=args.reason)
        else:
            done = library.rollback_rollout(args.prefix, args.alias, args.to, reason=args.reason)
        _print_moved(done)
        return 0
    except PublishError as exc:
        print(f"openmme rollout: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"openmme rollout: interrupted; {args.alias} stays at its current step: openmme rollout promote or"
            " rollback it",
            file=sys.stderr,
        )
        return 130


def _rollout_start(args: argparse.Namespace) -> int:
    from openmme.publish.progress import ProgressLine, format_ms
    from openmme.publish.rollout import Guardrails, start_rollout

    try:
        steps = tuple(float(step) for step in args.steps.split(","))
    except ValueError:
        print(
            f"openmme rollout: --steps takes percents separated by commas (10,50), not {args.steps!r}", file=sys.stderr
        )
        return 2
    guardrails = Guardrails(
        steps=steps,
        bake_seconds=args.bake,
        poll_seconds=args.poll,
        max_error_rate_increase=args.max_error_rate_increase / 100,
        max_latency_ratio=args.max_latency_ratio,
        latency_slack_ms=args.latency_slack_ms,
        min_requests=args.min_requests,
        confidence=args.confidence,
    )
    outcome = start_rollout(
        args.prefix,
        args.alias,
        args.version,
        args.endpoint,
        guardrails,
        name=args.name,
        reason=args.reason,
        check=not args.skip_check,
        report=lambda line: print(f"{args.alias}: {line}", flush=True),
        progress=ProgressLine(sys.stderr, amount=format_ms) if sys.stderr.isatty() else None,
    )
    print(f"{args.alias}: {outcome.result}: {outcome.reason}")
    return 0 if outcome.result == "promoted" else 1


def _print_moved(document: AliasDocument) -> None:
    """What ``alias set``, ``alias rollback`` and ``rollout promote|rollback`` answer: where the alias points now."""
    print(f"{document.alias} → {document.summary()} (generation {document.generation})")


def _history_line(document: AliasDocument) -> str:
    change = document.change
    if change is None:
        return f"{document.generation}\t\t\t\t{document.summary()}\t"
    return "\t".join(
        (str(document.generation), change.at, change.action, f"{change.by} ({change.user})", document.summary(),
         change.reason)
    )  # fmt: skip


def _print_alias(document: AliasDocument) -> None:
    change = document.change
    made = f" ({change.action} by {change.by} as {change.user} at {change.at}" if change else ""
    made += f": {change.reason})" if change and change.reason else (")" if change else "")
    print(f"alias {document.alias}, generation {document.generation}{made}")
    print(f"  {document.summary()}")
    for variant in document.variants:
        print(f"  variant {variant.name:<12} {variant.weight:>6g}%  {variant.target}")
    if document.shadow is not None:
        shadow = document.shadow
        print(f"  shadow  {shadow.name:<12} {shadow.percent:>6g}%  {shadow.target} (mirrored, never answered)")
    print(f"  sticky key: {document.sticky}")
    if document.rollout:
        print(f"  rollout: {_rollout_line(document.rollout)}")


def _rollout_line(rollout: Mapping[str, Any]) -> str:
    steps = ", ".join(f"{step:g}%" for step in rollout.get("steps", []))
    return (
        f"{rollout.get('canary')} against {rollout.get('live')}, step {int(rollout.get('step', 0)) + 1} of"
        f" {len(rollout.get('steps', []))} ({steps}), bake {rollout.get('bake_seconds')} s, started"
        f" {rollout.get('started_at')}"
    )


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


def _transform(args: argparse.Namespace) -> int:
    from openmme.transform.command import main as transform_main

    return transform_main(args)


def _pipeline(args: argparse.Namespace) -> int:
    from openmme.publish import PublishError
    from openmme.publish import pipelines as library

    try:
        if args.action == "show":
            manifest = library.get_pipeline(args.prefix, args.name)
            print(f"pipeline {manifest.name} ({len(manifest.steps)} steps)")
            for step in library.resolve_steps(args.prefix, manifest, check_target=args.check_target):
                print(f"  {step.describe()}")
            return 0
        return _pipeline_publish(args)
    except PublishError as exc:
        print(f"openmme pipeline: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("openmme pipeline: interrupted; nothing was written", file=sys.stderr)
        return 130


def _pipeline_publish(args: argparse.Namespace) -> int:
    from openmme.publish import ModelCheckFailed
    from openmme.publish.check import content_type_for
    from openmme.publish.pipelines import PipelineRefused, publish_pipeline, steps_with_accepts
    from openmme.publish.progress import ElapsedLine

    accepts: dict[int, str] = {}
    for text in args.accept_of:
        index, equals, mime = text.partition("=")
        if not equals or not index.strip().isdigit() or not mime:
            raise PipelineRefused(f"--accept-of takes INDEX=MIME (e.g. 1=text/csv), not {text!r}")
        accepts[int(index)] = mime
    sample = None
    if args.sample is not None:
        try:
            sample = args.sample.read_bytes()
        except OSError as exc:
            raise ModelCheckFailed(f"cannot read the sample {args.sample}: {exc}") from exc
    # The check starts an endpoint of its own and loads every step (tens of seconds): on a terminal, say so.
    doing = "resolving its steps" if args.no_check else "checking it on an endpoint of its own"
    with ElapsedLine(f"pipeline {args.name}: {doing}", sys.stderr) if sys.stderr.isatty() else nullcontext():
        report = publish_pipeline(
            args.prefix,
            args.name,
            steps_with_accepts(args.steps, accepts),
            sample=sample,
            content_type=args.content_type or (content_type_for(args.sample) if args.sample else None),
            accept=args.accept,
            check_target=args.check_target,
            serve_args=args.serve_arg,
            check=not args.no_check,
            force=args.force,
        )
    if report.outcome == "unchanged" and not report.steps:
        print(f"{report.uri} already holds this manifest; nothing was written\nTargetModel: {report.target_model}")
        return 0
    for step in report.steps:
        print(step.describe())
    if report.answer is not None:
        answer = report.answer
        print(
            f"checked: TargetModel {answer.target_model} answered 200 ({answer.content_type}, {len(answer.body)}"
            f" bytes): {answer.preview()}"
        )
    done = {"published": "published", "replaced": "replaced", "unchanged": "unchanged (already there):"}
    print(f"{done[report.outcome]} {report.uri}\nTargetModel: {report.target_model}")
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
    from openmme.endpoint.settings import OneLineErrors

    root = OneLineErrors(prog="openmme", description="A self-hosted SageMaker multi-model endpoint.")
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
    listing = action.add_parser(
        "list",
        help="TargetModel, size and last-modified of every model, then each alias and its versions (tab-separated)",
    )
    remove = action.add_parser("remove", help="delete one model from the prefix")
    remove.add_argument("name", metavar="NAME", help="the TargetModel, as `openmme models list` shows it")
    for sub in (listing, remove):
        sub.add_argument("--prefix", required=True, help="the endpoint's model prefix, s3://bucket/prefix/")

    _alias_parser(commands)
    _rollout_parser(commands)
    _pipeline_parser(commands)

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

    from openmme.transform.options import add_arguments as add_transform_arguments

    transform = commands.add_parser(
        "transform",
        help="batch transform: run a CreateTransformJob over S3 objects against one TargetModel",
        description="SageMaker batch transform (CreateTransformJob's fields as flags) against any TargetModel of a "
        "running endpoint (--endpoint-url) or of one started for the job (--model-prefix). Each input object's "
        "output, <output>/<name>.out, is written whole or not at all; a re-run skips the complete ones. Exit code: "
        "0 done, 1 some objects failed, 2 invalid job, 130 interrupted.",
    )
    add_transform_arguments(transform)
    return root


def _alias_parser(commands: Any) -> None:
    alias = commands.add_parser(
        "alias",
        help="aliases of a prefix: a stable TargetModel that stands for versions, with weights and a shadow",
        description="An alias is a TargetModel (houston) that endpoints resolve to versions, archives of the prefix "
        "(houston/v7/model.tar.gz). Its state lives in the prefix (.openmme/), every change is recorded, and two "
        "changes never overwrite each other.",
    )
    action = alias.add_subparsers(dest="action", required=True)
    setting = action.add_parser(
        "set",
        help="point an alias at one or more versions (checked: each must exist and load)",
        description="Each VERSION is an archive of the prefix, with its percent of the traffic (TARGET=PERCENT; "
        "the percents add up to 100; one version alone takes 100). Versions new to the alias are downloaded and "
        "loaded here first, as openmme publish path checks a model. Endpoints load the new versions before "
        "they route to them (a warm switch).",
    )
    setting.add_argument("alias", metavar="ALIAS")
    setting.add_argument("versions", nargs="+", metavar="VERSION[=PERCENT]")
    setting.add_argument("--names", help="the versions' variant names, comma-separated (default: from the archive's"
                         " name, houston/v7/model.tar.gz → v7); x-Amzn-Invoked-Production-Variant and TargetVariant"
                         " use them")  # fmt: skip
    setting.add_argument("--shadow", metavar="TARGET=PERCENT", help="mirror PERCENT of the alias's requests to TARGET")
    setting.add_argument("--shadow-name", help="the shadow's variant name (default: from its archive's name)")
    setting.add_argument(
        "--sticky",
        help="what keeps a caller on one version: inference-id (the default), custom-attribute:KEY (a key of "
        "CustomAttributes, KEY=value pairs separated by ; or ,), or none (a draw per request)",
    )
    setting.add_argument("--sample", type=Path, help="request rows each new version must answer (e.g. rows.csv)")
    setting.add_argument("--sample-content-type", help="the sample's Content-Type (default: from its suffix, else CSV)")
    setting.add_argument("--skip-check", action="store_true", help="do not load new versions here (they must exist)")
    show = action.add_parser("show", help="what an alias points at now, and its last change")
    history = action.add_parser("history", help="every change of an alias, oldest first (tab-separated)")
    history.add_argument("--limit", type=int, default=0, help="only the last N changes")
    remove = action.add_parser("remove", help="remove an alias (its history stays)")
    rollback = action.add_parser(
        "rollback", help="all traffic to the last version that took all of it before what serves now, or to --to"
    )
    rollback.add_argument("--to", metavar="VERSION", help="a variant name or archive the alias pointed at before")
    listing = action.add_parser("list", help="every alias of a prefix: name, generation, versions (tab-separated)")
    for sub in (setting, show, history, remove, rollback):
        if sub is not setting:
            sub.add_argument("alias", metavar="ALIAS")
    for sub in (setting, remove, rollback):
        sub.add_argument("--reason", default="", help="why, for the record")
        sub.add_argument(
            "--expect-generation",
            type=int,
            metavar="N",
            help="refuse unless the alias is still at generation N (as openmme alias show said)",
        )
    for sub in (setting, show, history, remove, rollback, listing):
        sub.add_argument("--prefix", required=True, help="the endpoint's model prefix, s3://bucket/prefix/")


def _rollout_parser(commands: Any) -> None:
    rollout = commands.add_parser(
        "rollout",
        help="a guarded canary of an alias: steps, bake time, automatic rollback on errors or latency",
        description="A canary version takes a growing share of an alias's traffic, step by step; each step bakes "
        "while the endpoints' figures of the canary and the live version are compared, and the canary is rolled "
        "back at once when it errs or slows down beyond the limits, promoted when every step held.",
    )
    action = rollout.add_subparsers(dest="action", required=True)
    start = action.add_parser("start", help="run a rollout to its end (promoted: exit 0; rolled back: 1)")
    start.add_argument("alias", metavar="ALIAS")
    start.add_argument("version", metavar="VERSION", help="the canary: an archive of the prefix")
    start.add_argument(
        "--endpoint",
        action="append",
        required=True,
        metavar="URL",
        help="an endpoint whose figures count (every replica's URL, not the router's); repeatable",
    )
    start.add_argument("--name", help="the canary's variant name (default: from its archive's name)")
    start.add_argument("--steps", default="10,50", help="the canary's percent at each step (default: 10,50)")
    start.add_argument("--bake", type=float, default=60.0, metavar="SECONDS", help="each step's bake (default: 60)")
    start.add_argument("--poll", type=float, default=2.0, metavar="SECONDS", help="figures read every (default: 2)")
    start.add_argument(
        "--max-error-rate-increase",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="percentage points the canary's error rate may exceed the live one's (default: 1)",
    )
    start.add_argument(
        "--max-latency-ratio",
        type=float,
        default=1.5,
        help="a canary latency quantile (p50, p90) over the live one's allowed (default: 1.5)",
    )
    start.add_argument(
        "--latency-slack-ms",
        type=float,
        default=5.0,
        help="and ms above it allowed: a smaller difference never fails (default: 5 ms)",
    )
    start.add_argument("--min-requests", type=int, default=20, help="canary requests to judge a step (default: 20)")
    start.add_argument(
        "--confidence",
        type=float,
        default=0.9999,
        help="of each bound compared: a difference the figures show with less is chance (default: 0.9999)",
    )
    start.add_argument("--skip-check", action="store_true", help="do not load the canary here first")
    status = action.add_parser("status", help="the rollout in progress, with the endpoints' figures if given")
    status.add_argument("--endpoint", action="append", default=[], metavar="URL", help="an endpoint; repeatable")
    promote = action.add_parser("promote", help="all traffic to the canary now")
    rollback = action.add_parser("rollback", help="all traffic to the live version now (or --to a known version)")
    rollback.add_argument("--to", metavar="VERSION", help="a variant name or archive the alias pointed at before")
    for sub in (status, promote, rollback):
        sub.add_argument("alias", metavar="ALIAS")
    for sub in (start, promote, rollback):
        sub.add_argument("--reason", default="", help="why, for the record")
    for sub in (start, status, promote, rollback):
        sub.add_argument("--prefix", required=True, help="the endpoint's model prefix, s3://bucket/prefix/")


def _pipeline_parser(commands: Any) -> None:
    pipeline = commands.add_parser(
        "pipeline",
        help="inference pipelines: a TargetModel NAME.pipeline.json that runs models of the prefix in sequence",
        description="A pipeline is a manifest in the prefix, NAME.pipeline.json, naming its steps in order (2 to "
        "15): archives of the prefix, aliases, or {TargetModel}, the model the request names after the pipeline "
        "(NAME.pipeline.json/houston/model.tar.gz). Clients invoke NAME.pipeline.json as any TargetModel.",
    )
    action = pipeline.add_subparsers(dest="action", required=True)
    publish = action.add_parser(
        "publish",
        help="check a pipeline end to end, then upload its manifest (create-only)",
        description="Before anything is uploaded: every step must resolve in the prefix (an archive, or an alias "
        "with a document), and an endpoint started here on the prefix, serving the manifest about to be "
        "uploaded, must answer the sample 200 through the pipeline. Then the manifest is written once: manifests "
        "are immutable, so a different manifest under a taken name is refused (publish a new name and move an "
        "alias to it); the same manifest again is no change.",
    )
    publish.add_argument("name", metavar="NAME", help="the pipeline's TargetModel, ending in .pipeline.json")
    publish.add_argument(
        "steps",
        nargs="+",
        metavar="STEP",
        help="in order: an archive of the prefix (featurizer/model.tar.gz), an alias, or {TargetModel}",
    )
    publish.add_argument(
        "--accept-of",
        action="append",
        default=[],
        metavar="INDEX=MIME",
        help="the Accept step INDEX (from 1) is asked in, for the next step (default: the step's own default "
        "accept); repeatable",
    )
    publish.add_argument(
        "--sample", type=Path, metavar="FILE", help="the request the pipeline must answer (required unless --no-check)"
    )
    publish.add_argument(
        "--content-type", metavar="MIME", help="the sample's Content-Type (default: from its suffix, else text/csv)"
    )
    publish.add_argument("--accept", metavar="MIME", help="the Accept the sample is sent with (the last step's answer)")
    publish.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="a flag for the check's `openmme serve` (repeat it; e.g. --serve-arg=--wheelhouse=/wheels)",
    )
    publish.add_argument("--no-check", action="store_true", help="only check that every step resolves")
    publish.add_argument("--force", action="store_true", help="replace a different manifest under NAME")
    show = action.add_parser("show", help="a pipeline's steps, and what each names in the prefix")
    show.add_argument("name", metavar="NAME", help="the pipeline's TargetModel, ending in .pipeline.json")
    for sub in (publish, show):
        sub.add_argument(
            "--check-target", metavar="MODEL", help="a model of the prefix to check a {TargetModel} step with"
        )
        sub.add_argument(
            "--model-prefix",
            "--prefix",
            dest="prefix",
            required=True,
            metavar="S3URI",
            help="the endpoint's model prefix, s3://bucket/prefix/",
        )


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
    if args.command == "alias":
        return _alias(args)
    if args.command == "rollout":
        return _rollout(args)
    if args.command == "transform":
        return _transform(args)
    if args.command == "pipeline":
        if args.action == "publish" and args.sample is None and not args.no_check:
            root.error("pipeline publish: --sample is required (the request the pipeline must answer), or --no-check")
        return _pipeline(args)
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
