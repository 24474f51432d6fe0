"""The demo's sample web for a run: a recipe's ``sample_web`` section served on 127.0.0.1 while the run reads it
(``unicurate demo``, configs/quickstart.yaml); the web itself is :mod:`unicurate.sampleweb`."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from unicurate.config import RecipeError
from unicurate.run.check import mark_unfinished
from unicurate.units import store as units_store
from unicurate.run.options import is_remote
from unicurate.sampleweb import SampleWeb


def sample_web_for(recipe, say: Callable[[str], None], dry_run: bool = False):
    """The recipe's sample web, checked now and served while the returned context is open; a recipe without a
    ``sample_web`` section (every recipe but the demo's) gets a context that yields it unchanged.

    Call it before any work: it refuses a sample web whose url list would go anywhere but
    ``OUTPUT/input/urls.parquet`` (a recipe's own ``input.path`` is never written over) and a remote output.
    Entered, it serves the sample web on 127.0.0.1, writes its url list there and yields the recipe to read the
    input from. A dry run writes it to a temporary folder instead (removed when the context closes), so that
    the job is built from it and nothing but the job file is written.
    """
    if getattr(recipe, "sample_web", None) is None:
        return contextlib.nullcontext(recipe)
    sw = recipe.sample_web
    if is_remote(recipe.output.path):
        raise RecipeError(f"sample_web writes its url list into output.path and serves the demo on this machine: "
                          f"output.path must be a local folder, not {recipe.output.path}")
    url_list = sw.url_list(recipe.output.path)
    if [os.path.normpath(p) for p in recipe.input.paths] != [os.path.normpath(url_list)]:
        given = ", ".join(recipe.input.paths)
        raise RecipeError(f"sample_web writes its url list to {url_list} (inside output.path), so a recipe with "
                          f"sample_web has no input.path of its own; this one names {given}, which is never "
                          f"written over. Remove input.path from the recipe, or curate {given} with "
                          f"`unicurate run RECIPE --input {given}` (no sample web then) or without sample_web")

    @contextlib.contextmanager
    def serve():
        web = SampleWeb(n_images=sw.images, seed=sw.seed, slow_seconds=sw.slow_seconds)
        # the SSRF guard stays on; only the sample web's own loopback address is let through (a recipe needs no
        # allow_private_networks for it, so the same recipe run with --input on web data keeps the guard whole)
        dl = recipe.download
        served = recipe.model_copy(update={"download": dl.model_copy(update={
            "allowed_networks": list(dl.allowed_networks) + [SampleWeb.NETWORK]})})
        with web.start(port=sw.port), contextlib.ExitStack() as stack:
            if dry_run:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="unicurate-dry-run-"))
                path = web.write_input(Path(tmp) / Path(url_list).name)
                read_from = served.model_copy(update={"input": served.input.model_copy(update={"path": str(path)})})
                say(f"sample web (dry run): {len(web.cases)} urls; the job reads its url list from {path} "
                    f"(removed after the dry run); a run writes it to {url_list}")
            else:
                # an earlier run's manifest, or its work units, must not describe another list (a new port)
                mark_unfinished(recipe.output.path)
                units_store.remove(recipe.output.path)
                path = web.write_input(url_list)
                read_from = served
                say(f"sample web: {len(web.cases)} urls served on {web.base_url}, url list in {path}")
            yield read_from

    return serve()

