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
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    logging.getLogger("unicurate").setLevel(logging.DEBUG if verbose else logging.INFO)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*imghdr.*")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def default_recipe(name: str) -> Path:
    """A recipe bundled with the package, in ``unicurate/recipes/`` (``configs/`` in a checkout links there).

    Found through importlib.resources, so ``unicurate demo`` works the same from a checkout, an editable install
    and an installed wheel, whatever the working directory.
    """
    recipe = resources.files("unicurate") / "recipes" / name
    if not recipe.is_file():
        raise FileNotFoundError(f"recipe {name} is not bundled with unicurate (unicurate/recipes/)")
    return Path(str(recipe))


def recipe_path(given: str, say=lambda _m: None) -> str:
    """The recipe file to read: ``given``, or, when no such file exists and ``given`` names a bundled recipe
    (``quickstart.yaml``, ``configs/laion-style.yaml``), that one: an installed wheel has no ``configs/``."""
    if Path(given).exists():
        return given
    try:
        bundled = default_recipe(Path(given).name)
    except FileNotFoundError:
        return given  # load_recipe says it is not found
    say(f"{given}: no such file here; using the recipe bundled with unicurate ({bundled})")
    return str(bundled)


def cmd_run(args, beam_args: list[str]) -> int:
    from unicurate.config import RecipeError, load_recipe

    try:
        overrides = _parse_overrides(args.set or [])
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if args.input:
        overrides["input.path"] = args.input
    if args.output:
        overrides["output.path"] = args.output
    try:
        recipe = load_recipe(recipe_path(args.recipe, say=print), overrides)
    except RecipeError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if getattr(recipe, "sample_web", None) is not None and overrides.get("input.path") is not None:
        # the user's input wins over a demo recipe's sample web: it is neither generated nor served
        recipe = recipe.model_copy(update={"sample_web": None})
        given = "--input" if args.input else "--set input.path"
        _say(f"sample_web ignored: {given} given, curating {recipe.input.path}")
    manifest, code = _run(recipe, beam_args, dry_run=args.dry_run, job_file=args.job_file, restart=args.restart)
    if manifest is None:
        return code
    if args.dry_run:
        return EXIT_OK
    _say("")
    _say(_funnel(manifest))
    out = manifest["recipe"]["output"]["path"]
    _say(f"\nwrote {out} in {manifest.get('_elapsed_seconds', 0):.1f}s; check it with: unicurate validate {out}")
    return EXIT_OK


def _parse_overrides(items: list[str]) -> dict:
    """``--set filters.aesthetic.min_score=5.5`` -> {"filters.aesthetic.min_score": 5.5} (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip() or any(not p for p in path.strip().split(".")):
            raise ValueError(f"--set {item!r}: expected DOTTED.PATH=VALUE, e.g. filters.aesthetic.min_score=5.5")
        try:
            out[path.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
    return out


def _funnel(manifest: dict) -> str:
    """What a finished run prints: its pipeline's summary of the manifest."""
    from unicurate.run.execute import PIPELINES

    return PIPELINES[manifest["recipe"]["pipeline"]].summarize(manifest)


def _run(recipe, beam_args: list[str], dry_run: bool = False,
         job_file: Optional[str] = None, restart: bool = False) -> tuple[Optional[dict], int]:
    """Run a recipe: (manifest, EXIT_OK), or on failure one clear message and (None, exit code).

    ``dry_run``: build the pipeline for the chosen runner and write the job description instead (no manifest);
    ``restart``: discard the work units an earlier run of this output finished instead of resuming them.
    """
    from unicurate.config import RecipeError
    from unicurate.models.resolver import ModelUnavailable
    from unicurate.download.ingest import InputError
    from unicurate.run.check import RunCheckFailed
    from unicurate.run.execute import run

    try:
        return run(recipe, beam_args, say=_say, dry_run=dry_run, job_file=job_file, restart=restart,
                   progress=True), EXIT_OK
    except (RecipeError, InputError) as exc:
        _err(str(exc))
        return None, EXIT_USAGE
    except ModelUnavailable as exc:
        _err(str(exc))
        _err("nothing was read or written")
        return None, EXIT_USAGE
    except RunCheckFailed as exc:  # the pipeline finished, but its output does not hold every input row once
        _err(str(exc))
        return None, EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a failed pipeline: say what and where, not a traceback
        logging.getLogger("unicurate").debug("pipeline failed", exc_info=True)  # shown with --verbose
        if dry_run:
            _err(f"the dry run failed while building the job: {exc}")
            return None, EXIT_FAILED
        _err(f"the pipeline failed: {exc}")
        _err(f"{recipe.output.path} has no manifest.json, so it is marked unfinished; fix the cause and rerun the "
             "same command: the work units it finished are kept and not redone")
        return None, EXIT_FAILED


def cmd_validate(args) -> int:
    from unicurate.manifests.validate import format_report, validate

    rep = validate(args.dir)
    print(format_report(rep), file=sys.stdout if rep.ok else sys.stderr)
    return EXIT_OK if rep.ok else EXIT_FAILED


def cmd_stats(args) -> int:
    import json

    from unicurate.manifests.stats import StatsError, format_stats, stats

    try:
        s = stats(args.dir, by=args.by)
    except StatsError as exc:
        _err(str(exc))
        return EXIT_USAGE
    print(json.dumps(s, indent=2, sort_keys=True) if args.json else format_stats(s), flush=True)
    return EXIT_OK


def cmd_whatif(args) -> int:
    import json

    from unicurate.manifests.stats import StatsError
    from unicurate.manifests.whatif import WhatIfError, format_whatif, whatif

    try:
        s = whatif(args.dir, args.set or [], apply_to=args.apply, say=_say if not args.json else (lambda _m: None))
        m = s.pop("applied", None)
        print(json.dumps(s, indent=2, sort_keys=True) if args.json else format_whatif(s), flush=True)
        if m is not None and not args.json:
            _say(f"\nwrote {args.apply}: {m['counts']['kept']} kept, {m['counts']['rejected']} rejected "
                 f"(rows copied); check it with: unicurate validate {args.apply}")
    except (WhatIfError, StatsError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    return EXIT_OK


def cmd_report(args) -> int:
    from unicurate.manifests.report import ReportError, write_report
    from unicurate.manifests.stats import StatsError

    try:
        path = write_report(args.dir, args.out)
    except (ReportError, StatsError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    _say(f"wrote {path} (one self-contained HTML file; open it in a browser)")
    return EXIT_OK


def cmd_export(args) -> int:
    from unicurate.manifests.export import ExportError, export
    from unicurate.manifests.stats import StatsError

    try:
        em = export(args.dir, args.format, args.to, kept_only=args.kept_only, max_count=args.max_count, say=_say,
                    layout=args.layout, edit_types=args.edit_types.split(",") if args.edit_types else None,
                    embeddings=args.embeddings)
    except (ExportError, StatsError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    total = sum(em["counts"].values())
    _say(f"exported {total} rows as {args.format} to {args.to} ({len(em['files'])} files; "
         f"checksums in {args.to}/unicurate-export.json)")
    if em["source"]["uncalibrated"]:
        _say("warning: the source run used UNCALIBRATED models (tiny profile); do not train on it")
    return EXIT_OK


def _models_cfg(args):
    from unicurate.config import ModelsConfig, load_recipe

    if args.recipe:
        recipe = load_recipe(recipe_path(args.recipe))
        return recipe.models, recipe
    return ModelsConfig(profile=args.profile, cache_dir=args.cache_dir), None


def cmd_models(args) -> int:
    from unicurate.config import RecipeError
    from unicurate.models import zoo
    from unicurate.models.resolver import ModelUnavailable, default_cache_dir, stage

    try:
        mcfg, recipe = _models_cfg(args)
    except RecipeError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if recipe is not None:
        specs = zoo.specs_for_recipe(recipe)
    else:
        specs = [zoo.spec_with_overrides(s, mcfg) for s in zoo.profile_specs(mcfg.profile).values()]
    cache = mcfg.cache_dir or default_cache_dir()
    if args.models_command == "list":
        _say(f"profile {mcfg.profile}; cache {cache}" + (f"; mirror {mcfg.mirror}" if mcfg.mirror else ""))
        width = max(len(s.name) for s in specs) + 2
        states = {spec.name: zoo.presence(spec, cache) for spec in specs}
        for spec in specs:
            cal = "" if spec.calibrated else "  [uncalibrated]"
            _say(f"{spec.name:<{width}}{states[spec.name]:<12}{spec.uri}{cal}")
            _say(f"{'':<{width}}{'':<12}{spec.title}")
        missing = [name for name, state in states.items() if state == "missing"]
        if missing:
            _say(f"\nmissing: {', '.join(missing)}. Stage them with: unicurate models fetch --profile "
                 f"{mcfg.profile} --to DIR (on a machine with internet access)")
        return EXIT_OK
    # fetch
    failed = 0
    for spec in specs:
        if spec.uri.startswith("tiny://"):
            _say(f"{spec.name}: built in code (tiny profile), nothing to fetch")
            continue
        if spec.uri.startswith("package://"):
            _say(f"{spec.name}: ships in its Python package ({spec.uri}), nothing to fetch")
            continue
        try:
            files = spec.options.get("files")
            if args.to and files:  # a folder model (BERT): stage each of its files
                where = ", ".join(stage(spec.uri.rstrip("/") + "/" + f, args.to, model=spec.name,
                                        cache_dir=mcfg.cache_dir, offline=mcfg.offline) for f in files)
            elif args.to:
                where = stage(spec.uri, args.to, model=spec.name, sha256=spec.sha256, cache_dir=mcfg.cache_dir,
                              offline=mcfg.offline)
            else:
                where = str(zoo.locate(spec, mcfg))
            _say(f"{spec.name}: {spec.uri} -> {where}")
        except ModelUnavailable as exc:
            failed += 1
            _err(str(exc))
    if args.to and not failed:
        _say(f"\nstaged in {args.to}; use it with `models: {{mirror: {args.to}}}` in a recipe")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_demo(args, beam_args: list[str]) -> int:
    from unicurate.config import load_recipe

    out = Path(args.output)
    # the sample web's url list goes to OUTPUT/input/urls.parquet (config.SampleWebConfig.url_list)
    recipe = load_recipe(default_recipe("quickstart.yaml"), {"output.path": str(out)})
    _say("unicurate demo: a generated sample web on 127.0.0.1, curated with configs/quickstart.yaml")
    manifest, code = _run(recipe, beam_args)
    if manifest is None:
        return code
    _say("")
    _say(_funnel(manifest))
    _say("")
    _say(_expected_check(manifest["recipe"]["output"]["path"]))
    if args.no_synthesis:
        _say(f"\nnext: unicurate validate {out}")
        return EXIT_OK
    syn_out = out / "synthesis"
    syn_recipe = load_recipe(default_recipe("synthesize.yaml"), {"input.path": str(out), "output.path": str(syn_out)})
    _say("")
    _say(f"unicurate demo, step 2: subject samples and edit triplets from the kept images, with "
         f"configs/synthesize.yaml -> {syn_out}")
    syn_manifest, code = _run(syn_recipe, beam_args)
    if syn_manifest is None:
        return code
    _say("")
    _say(_funnel(syn_manifest))
    _say(f"\nnext: unicurate validate {out} && unicurate validate {syn_out}")
    _say(f"      unicurate stats {out}            (funnel, reasons, score quantiles; --json)")
    _say(f"      unicurate report {out}           (HTML report; also for {syn_out})")
    _say(f"      unicurate whatif {out} --set 'clip_score>=0' --set 'aesthetic_score>=-0.228'")
    from unicurate.manifests.export import FORMATS

    for kind, where in (("curated", out), ("synthesis", syn_out)):
        names = "|".join(f.name for f in FORMATS.values() if kind in f.kinds)
        _say(f"      unicurate export {where} --format {names} --to EXPORT_DIR")
    return EXIT_OK


def _expected_check(out_dir: str) -> str:
    """Compare each sample-web case's outcome with what the sample web says it should be."""
    import json

    import polars as pl

    from unicurate.schema import REASON_STAGE, Reason, Stage

    frames = [pl.read_parquet(f"{out_dir}/{sub}/*.parquet", columns=["url", "status", "reject_reasons", "metadata"])
              for sub in ("kept", "rejected")]
    df = pl.concat(frames)
    lines = ["sample-web cases (expected -> got):"]
    mismatches = model_rejected = 0
    for row in df.sort("url").iter_rows(named=True):
        expected = json.loads(row["metadata"] or "{}").get("expected")
        if expected is None or expected == "kept" and row["status"] == "kept":
            continue
        reasons = row["reject_reasons"] or []
        got = "kept" if row["status"] == "kept" else ",".join(reasons)
        if expected == "kept" and reasons and all(REASON_STAGE[Reason(r)] == Stage.SCORE for r in reasons):
            model_rejected += 1  # passed download, decode, rules and dedup; a model filter said no
            continue
        ok = expected in reasons or (expected == "kept" and got == "kept")
        mismatches += not ok
        lines.append(f"  {'ok ' if ok else 'BAD'} {expected:<20} -> {got:<28} {row['url']}")
    if model_rejected:
        lines.append(f"  ({model_rejected} good images passed every other stage and were rejected by a model filter)")
    lines.append("every broken case was rejected with its expected reason" if not mismatches
                 else f"{mismatches} case(s) did not get the expected outcome")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from unicurate import __version__
    from unicurate.filters.registry import thresholds_by_column

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
    p.add_argument("--input", help="override input.path (read only; a recipe's sample_web is then not started)")
    p.add_argument("--output", help="override output.path")
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="override any recipe field, e.g. --set filters.aesthetic.min_score=5.5 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the pipeline for the chosen runner and write its job description (graph, container "
                        "image, accelerators, options) as JSON without running or submitting anything; with "
                        "DataflowRunner this needs no network")
    p.add_argument("--restart", action="store_true",
                   help="discard the work units an earlier (killed, failed or changed) run left in the output folder "
                        "and start over; without it a rerun resumes them")
    p.add_argument("--job-file", help="where --dry-run writes the job description (default: OUTPUT.job.json next to "
                                      "a local output folder, ./NAME.job.json for a gs:// output)")

    p = sub.add_parser("validate", help="check an output folder against its manifest")
    p.add_argument("dir", help="output folder (local or gs://)")

    p = sub.add_parser("stats", help="funnel, reject reasons, sources, score quantiles and sizes (polars)")
    p.add_argument("dir", help="curated or synthesis output folder")
    p.add_argument("--json", action="store_true", help="print one stable JSON object")
    p.add_argument("--by", help="also break the funnel down by this column (e.g. source)")

    p = sub.add_parser("whatif", help="recompute the selection under new thresholds from recorded scores")
    p.add_argument("dir", help="curated output folder")
    p.add_argument("--set", action="append", metavar="SCORE>=VALUE",
                   help="a new bound on a recorded score: " + ", ".join(  # each filter declares its bounds
                       score + " or ".join(f"{b.op}VALUE" for b in bounds)
                       for score, (_, bounds) in thresholds_by_column().items())
                   + "; SCORE=off removes them (repeatable)")
    p.add_argument("--apply", metavar="NEW_OUT", help="write the new selection as an output folder (rows copied)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("report", help="write one self-contained HTML report")
    p.add_argument("dir", help="curated or synthesis output folder")
    p.add_argument("--out", help="HTML file to write (default: DIR/report.html)")

    from unicurate.manifests.export import FORMATS

    titles = [f.title for f in FORMATS.values()]
    p = sub.add_parser("export", help=f"export to {', '.join(titles[:-1])} or {titles[-1]}")
    p.add_argument("dir", help="curated or synthesis output folder")
    p.add_argument("--format", required=True, choices=list(FORMATS))
    p.add_argument("--to", required=True, help="destination folder (new, empty, or an earlier export)")
    p.add_argument("--kept-only", action="store_true", help="curated runs: only kept rows (default: kept + rejected)")
    p.add_argument("--max-count", type=int, default=10_000, help="rows per WebDataset tar / img2dataset shard (default 10000)")
    layouts = "; ".join(f"{f.name}: {', '.join(f.layouts)}" for f in FORMATS.values() if len(f.layouts) > 1)
    p.add_argument("--layout", help=f"the format's file layout ({layouts}; default: the first)")
    p.add_argument("--edit-types", help="synthesis runs: only these edit types, comma-separated (default: all)")
    p.add_argument("--embeddings", action="store_true",
                   help="curated runs written with output.embeddings: also DEST/embeddings/ (clip-retrieval layout)")

    p = sub.add_parser("models", help="list or fetch the models of a profile")
    msub = p.add_subparsers(dest="models_command", required=True)
    for name, text in (("list", "show each model, its weights URI and whether it is here"),
                       ("fetch", "download the weights (on a machine with internet access)")):
        q = msub.add_parser(name, help=text)
        q.add_argument("--profile", choices=["default", "tiny"], default="default")
        q.add_argument("--recipe", help="only the models this recipe uses (with its overrides and cache)")
        q.add_argument("--cache-dir", help="weights cache (default ~/.cache/unicurate/models)")
        if name == "fetch":
            q.add_argument("--to", help="also copy them here (folder or gs://bucket/path) in the cache layout, "
                                        "for models.mirror")

    p = sub.add_parser("demo", help="offline demo: sample web on 127.0.0.1 + the quickstart recipe")
    p.add_argument("--output", default="unicurate-demo", help="output folder (default: ./unicurate-demo); "
                                                              "synthesis goes to OUTPUT/synthesis")
    p.add_argument("--no-synthesis", action="store_true", help="only the curate step")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run one command. ``argv=None`` means this is the process's entry point (the ``unicurate`` script or
    ``python -m unicurate.cli``): the process then ends through :func:`_exit_process` once the command
    has returned. Called with a list (in-process use), the exit code is returned."""
    if argv is not None:
        return _main(list(argv))
    _exit_process(_main(sys.argv[1:]))
    return EXIT_USAGE  # pragma: no cover - _exit_process does not return


def _exit_process(code: int) -> None:
    """End the process after a finished command without the interpreter's native teardown.

    By now every output is written and closed. What remains is Python-level cleanup, which is kept
    (non-daemon threads are joined, atexit handlers run: temp dirs, logging, multiprocessing), and the
    C++ static destructors of the native libraries, which are skipped: pyarrow's Parquet reader threads
    can abort the process there ("terminate called without an active exception", apache/arrow#34314),
    turning a finished command into exit status -6 now and then.
    """
    import atexit
    import threading

    # what Py_Finalize does first: run the threading atexit hooks (they stop idle thread-pool workers), then
    # join the non-daemon threads
    getattr(threading, "_shutdown", lambda: None)()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else EXIT_USAGE)


def _main(argv: list[str]) -> int:
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
        if args.command == "stats":
            return cmd_stats(args)
        if args.command == "whatif":
            return cmd_whatif(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "models":
            return cmd_models(args)
        if args.command == "demo":
            return cmd_demo(args, beam_args)
    except KeyboardInterrupt:
        _err("interrupted; the output folder has no manifest, so it is marked unfinished")
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
