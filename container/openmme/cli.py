"""The ``openmme`` command line.

    openmme serve   [--model-prefix s3://bucket/prefix/] [--endpoint-name NAME] [--port 8080] …
    openmme demo    [--keep-running]           embedded S3 + sample models + endpoint + real invocations
    openmme publish path ARCHIVE_OR_DIR --prefix s3://… --name TARGET_MODEL [--overwrite]
    openmme publish samples --prefix s3://…    the quick start's sample models
    openmme models list --prefix s3://…        the TargetModel names a prefix holds

``serve`` also runs as a bare ``serve`` (the container entrypoint SageMaker calls).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _serve(argv: Sequence[str]) -> int:
    from openmme.endpoint.server import serve
    from openmme.endpoint.settings import Settings

    serve(Settings.from_sources(argv))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from openmme.publish import ArtifactExists, create_bucket, pack_directory, publish_archive

    try:
        if args.what == "samples":
            from openmme.publish.samples import SAMPLES, sample_archive, train_booster

            if args.create_bucket:
                create_bucket(args.prefix)
            for sample in SAMPLES:
                archive = sample_archive(train_booster(sample.objective, sample.seed))
                publish_archive(archive, args.prefix, sample.target_model, overwrite=args.overwrite)
                print(f"published {sample.target_model} ({sample.objective})")
            return 0
        local = Path(args.local)
        archive = pack_directory(local) if local.is_dir() else local.read_bytes()
        target = publish_archive(archive, args.prefix, args.name, overwrite=args.overwrite)
    except (ArtifactExists, ValueError, OSError) as exc:
        print(f"openmme publish: {exc}", file=sys.stderr)
        return 1
    print(f"published {args.prefix}{target}\nTargetModel: {target}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from openmme.publish import list_models

    try:
        for model in list_models(args.prefix):
            print(f"{model.target_model}\t{model.size}\t{model.last_modified.isoformat()}")
    except ValueError as exc:
        print(f"openmme models: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from openmme.demo import run_demo

    return run_demo(keep_running=args.keep_running, port=args.port, workdir=args.workdir)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="openmme", description="A self-hosted SageMaker multi-model endpoint.")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the endpoint (all flags: openmme serve --help)", add_help=False)

    demo = commands.add_parser("demo", help="embedded S3 + sample models + endpoint + real invocations")
    demo.add_argument("--keep-running", action="store_true", help="leave the endpoint up until Ctrl-C")
    demo.add_argument("--port", type=int, default=0, help="endpoint port (default: 8080 if free)")
    demo.add_argument("--workdir", type=Path, default=None, help="where the demo keeps its files")

    publish = commands.add_parser("publish", help="put models into an endpoint's S3 prefix")
    what = publish.add_subparsers(dest="what", required=True)
    path = what.add_parser("path", help="a model.tar.gz, or a directory to pack as one")
    path.add_argument("local")
    path.add_argument("--name", required=True, help="the TargetModel, e.g. houston/model.tar.gz")
    samples = what.add_parser("samples", help="train and publish the quick start's sample models")
    samples.add_argument("--create-bucket", action="store_true", help="create the prefix's bucket if missing")
    for sub in (path, samples):
        sub.add_argument("--prefix", required=True, help="the endpoint's model prefix, s3://bucket/prefix/")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing artifact")

    models = commands.add_parser("models", help="what an endpoint's prefix holds")
    action = models.add_subparsers(dest="action", required=True)
    listing = action.add_parser("list", help="TargetModel, size and last-modified of every archive")
    listing.add_argument("--prefix", required=True)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        return _serve(argv[1:])
    args = parser().parse_args(argv)
    if args.command == "publish":
        return _publish(args)
    if args.command == "models":
        return _models(args)
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
