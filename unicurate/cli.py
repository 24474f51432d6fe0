"""The ``unicurate`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _quiet_libraries(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    else:
        # Beam's gcp module warns spuriously without the gcp extra, and a failed pipeline is
        # reported by us in one message; --verbose shows Beam's own logs and tracebacks.
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    logging.getLogger("unicurate").setLevel(logging.DEBUG if verbose else logging.INFO)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*imghdr.*")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def default_recipe(name: str) -> Path:
    """A recipe shipped in configs/ (repo checkout) or packaged with unicurate."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs" / name, Path(str(resources.files("unicurate") / "configs" / name))):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"recipe {name} not found next to the package")


def cmd_run(args, beam_args: list[str]) -> int:
    from unicurate.config import RecipeError, load_recipe
    from unicurate.pipelines.runner import format_funnel

    overrides = {}
    if args.input:
        overrides["input.path"] = args.input
    if args.output:
        overrides["output.path"] = args.output
    try:
        recipe = load_recipe(args.recipe, overrides)
    except RecipeError as exc:
        _err(str(exc))
        return EXIT_USAGE
    manifest, code = _run(recipe, beam_args)
    if manifest is None:
        return code
    _say("")
    _say(format_funnel(manifest))
    out = manifest["recipe"]["output"]["path"]
    _say(f"\nwrote {out} in {manifest.get('_elapsed_seconds', 0):.1f}s; check it with: unicurate validate {out}")
    return EXIT_OK


def _run(recipe, beam_args: list[str]) -> tuple[Optional[dict], int]:
    """Run a recipe: (manifest, EXIT_OK), or on failure one clear message and (None, exit code)."""
    from unicurate.config import RecipeError
    from unicurate.pipelines.ingest import InputError
    from unicurate.pipelines.runner import run_curate

    try:
        return run_curate(recipe, beam_args, say=_say), EXIT_OK
    except (RecipeError, InputError) as exc:
        _err(str(exc))
        return None, EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - a failed pipeline: say what and where, not a traceback
        logging.getLogger("unicurate").debug("pipeline failed", exc_info=True)  # shown with --verbose
        _err(f"the pipeline failed: {exc}")
        _err(f"{recipe.output.path} has no manifest.json, so it is marked unfinished; "
             "fix the cause and rerun the same command")
        return None, EXIT_FAILED


def cmd_validate(args) -> int:
    from unicurate.manifests.validate import format_report, validate

    rep = validate(args.dir)
    print(format_report(rep), file=sys.stdout if rep.ok else sys.stderr)
    return EXIT_OK if rep.ok else EXIT_FAILED


def cmd_demo(args, beam_args: list[str]) -> int:
    from unicurate.config import load_recipe
    from unicurate.pipelines.runner import format_funnel

    out = Path(args.output)
    recipe = load_recipe(default_recipe("quickstart.yaml"), {
        "output.path": str(out),
        "input.path": str(out / "input" / "urls.parquet"),
    })
    _say("unicurate demo: a generated sample web on 127.0.0.1, curated with configs/quickstart.yaml")
    manifest, code = _run(recipe, beam_args)
    if manifest is None:
        return code
    _say("")
    _say(format_funnel(manifest))
    _say("")
    _say(_expected_check(manifest["recipe"]["output"]["path"]))
    _say(f"\nnext: unicurate validate {out}")
    return EXIT_OK


def _expected_check(out_dir: str) -> str:
    """Compare each sample-web case's outcome with what the sample web says it should be."""
    import json

    import polars as pl

    frames = [pl.read_parquet(f"{out_dir}/{sub}/*.parquet", columns=["url", "status", "reject_reasons", "metadata"])
              for sub in ("kept", "rejected")]
    df = pl.concat(frames)
    lines = ["sample-web cases (expected -> got):"]
    mismatches = 0
    for row in df.sort("url").iter_rows(named=True):
        expected = json.loads(row["metadata"] or "{}").get("expected")
        if expected is None or expected == "kept" and row["status"] == "kept":
            continue
        got = "kept" if row["status"] == "kept" else ",".join(row["reject_reasons"])
        ok = expected in (row["reject_reasons"] or []) or (expected == "kept" and got == "kept")
        mismatches += not ok
        lines.append(f"  {'ok ' if ok else 'BAD'} {expected:<20} -> {got:<28} {row['url']}")
    lines.append("every broken case was rejected with its expected reason" if not mismatches
                 else f"{mismatches} case(s) did not get the expected outcome")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from unicurate import __version__

    parser = argparse.ArgumentParser(
        prog="unicurate",
        description="Build training data for unified multimodal models with Apache Beam.",
        epilog="Beam pipeline options go after '--', e.g. "
               "unicurate run recipe.yaml -- --direct_num_workers 2 --direct_running_mode multi_processing",
    )
    parser.add_argument("--version", action="version", version=f"unicurate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Beam's logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a recipe (YAML) on Beam")
    p.add_argument("recipe", help="recipe file, e.g. configs/quickstart.yaml")
    p.add_argument("--input", help="override input.path")
    p.add_argument("--output", help="override output.path")

    p = sub.add_parser("validate", help="check an output folder against its manifest")
    p.add_argument("dir", help="output folder (local or gs://)")

    p = sub.add_parser("demo", help="offline demo: sample web on 127.0.0.1 + the quickstart recipe")
    p.add_argument("--output", default="unicurate-demo", help="output folder (default: ./unicurate-demo)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, beam_args = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    try:
        if args.command == "run":
            return cmd_run(args, beam_args)
        if args.command == "validate":
            return cmd_validate(args)
        if args.command == "demo":
            return cmd_demo(args, beam_args)
    except KeyboardInterrupt:
        _err("interrupted; the output folder has no manifest, so it is marked unfinished")
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
