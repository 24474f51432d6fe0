"""The units folder as the driver sees it: claimed for a run (or refused, when it holds units of another data
recipe), watched while the run goes (``units: 37/120 done (12 resumed)`` and a progress bar), and removed once the
run's manifest is published (kept with ``output.keep_units``)."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import yaml

from unicurate.config import RecipeError
from unicurate.manifests import manifest as mf
from unicurate.units import store
from unicurate.units.plan import UnitPlan


class UnitsMismatch(RecipeError):
    """The output folder holds work units made with another data recipe (or inputs, or cut): they cannot be mixed
    with this run's."""


def plan_path(out_dir: str) -> str:
    return mf.join(out_dir, store.UNITS_DIR, store.PLAN_NAME)


def read_plan(out_dir: str) -> UnitPlan:
    """The cut the driver wrote for the run in ``out_dir`` (each DoFn reads it once, in ``setup``)."""
    obj = store.read_json(plan_path(out_dir))
    if not isinstance(obj, dict) or "plan" not in obj:
        raise RuntimeError(f"{plan_path(out_dir)} is missing or unreadable: the run's driver writes it before the "
                           "pipeline starts; rerun the command")
    return UnitPlan.from_json(obj["plan"])


@dataclass
class Claim:
    """What the driver found in the units folder before the run: the units already done (index -> rows)."""

    plan: UnitPlan
    done: dict[int, int] = field(default_factory=dict)

    def line(self) -> str:
        return f"units: {len(self.done)}/{self.plan.n_units} done ({len(self.done)} resumed)"

    def final_line(self, metrics: dict) -> str:
        """Once the run is done: how many units its workers resumed and processed (their counters)."""
        n = self.plan.n_units
        return (f"units: {n}/{n} done ({metrics.get('units_resumed', 0)} resumed, "
                f"{metrics.get('units_processed', 0)} processed)")


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differences(old: dict, new: dict, limit: int = 6) -> list[str]:
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    out = [f"{k}: {a.get(k, '<unset>')!r} then, {b.get(k, '<unset>')!r} now" for k in keys[:limit]]
    return out + ([f"... and {len(keys) - limit} more"] if len(keys) > limit else [])


def claim(out_dir: str, plan: UnitPlan, recipe, restart: bool = False, given=None) -> Claim:
    """Make ``out_dir``'s units folder this run's: with ``restart``, empty it first; refuse (:class:`UnitsMismatch`,
    before anything is written) when it holds units of another data recipe, other inputs or another cut; write the
    plan the workers read and the recipe that makes the units (``given``: as the user gave it, default ``recipe``);
    return the units already done."""
    if restart:
        store.remove(out_dir)
    recipe_hash = recipe.recipe_hash()
    old = store.read_json(plan_path(out_dir))
    if isinstance(old, dict) and old.get("plan") is not None:
        _refuse_mixing(out_dir, old, plan, recipe, recipe_hash)
        # the units are resumed with the cut that made them, whatever rows_per_unit or worker count says now
        plan = dataclasses.replace(plan, rows_per_unit=int(old["plan"]["rows_per_unit"]))
    for path in store.leftovers(out_dir):  # temporary files of unit writes an interrupted run left behind
        mf.delete_if_exists(path)
    mf.write_json_atomic(plan_path(out_dir), {"recipe_hash": recipe_hash, "data_recipe": recipe.data_recipe(),
                                              "inputs": recipe.input_files(), "plan": plan.to_json()})
    _write_recipe(out_dir, given if given is not None else recipe)
    return Claim(plan, done_units(out_dir, plan, recipe_hash))


def _refuse_mixing(out_dir: str, old: dict, plan: UnitPlan, recipe, recipe_hash: str) -> None:
    units = mf.join(out_dir, store.UNITS_DIR)
    how = (f"To start over, rerun with --restart (the units in {units} are deleted). To resume them instead, run "
           f"the recipe that made them: {mf.join(units, store.RECIPE_NAME)}.")
    if old.get("recipe_hash") != recipe_hash:
        why = _differences(old.get("data_recipe") or {}, recipe.data_recipe())
        if why:
            raise UnitsMismatch(f"{units} holds work units of another data recipe (recipe hash "
                                f"{str(old.get('recipe_hash'))[:12]}, this run's is {recipe_hash[:12]}); mixing them "
                                f"would make an output no single recipe made. What changed:\n  " + "\n  ".join(why)
                                + f"\n{how}")
        change = _input_change(old.get("inputs") or [], recipe.input_files())
        raise UnitsMismatch(f"{units} holds work units of other input files ({change}): they cannot be resumed. "
                            "Rerun with --restart to start over.")
    if old["plan"].get("n_rows") != plan.n_rows:
        raise UnitsMismatch(f"{units} holds work units over {old['plan'].get('n_rows')} input rows, but the inputs "
                            f"hold {plan.n_rows} rows now: they changed. Rerun with --restart to start over.")


def _input_change(old: list, new: list, limit: int = 3) -> str:
    changed = [f"{o.get('name')} ({o.get('bytes')} bytes) then, {n.get('name')} ({n.get('bytes')} bytes) now"
               for o, n in zip(old, new) if o != n][:limit]
    if len(old) != len(new):
        changed.append(f"{len(old)} file(s) then, {len(new)} now")
    return "; ".join(changed) or "their identity differs"


def _write_recipe(out_dir: str, recipe) -> None:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    text = "# the recipe that made the work units in this folder (resume with it: unicurate run <this file>)\n"
    text += yaml.safe_dump(recipe.resolved(), sort_keys=False)
    with FileSystems.create(mf.join(out_dir, store.UNITS_DIR, store.RECIPE_NAME),
                            compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(text.encode())


def done_units(out_dir: str, plan: UnitPlan, recipe_hash: str) -> dict[int, int]:
    """{index: rows} of the units whose completion record fits this run (the workers also check each file's
    sha256 before they take it)."""
    present = [i for i in store.record_files(out_dir) if i < plan.n_units]

    def check(index: int) -> Optional[int]:
        unit = plan.unit(index)
        return unit.rows if store.record_fits(store.read_record(out_dir, index), unit, recipe_hash) else None

    with ThreadPoolExecutor(max_workers=16) as pool:
        return {i: n for i, n in zip(present, pool.map(check, present)) if n is not None}


def finish(out_dir: str, keep: bool, say: Callable[[str], None]) -> None:
    """The run's manifest is published: the units are no longer needed (unless ``keep``)."""
    if keep:
        say(f"work units kept in {mf.join(out_dir, store.UNITS_DIR)} (output.keep_units)")
    else:
        store.remove(out_dir)


class Watch:
    """While the pipeline runs: a progress bar over the input rows (tqdm: rows/s and ETA), advanced as completion
    records appear in the units folder (a listing every ``every`` seconds; default 2 s locally, 30 s on gs://,
    where a listing of many units costs requests)."""

    def __init__(self, out_dir: str, claim_: Claim, show: bool, every: Optional[float] = None):
        self.out_dir, self.claim, self.show = out_dir, claim_, show
        self.every = every if every is not None else (30.0 if "://" in out_dir else 2.0)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.seen = set(claim_.done)

    def __enter__(self) -> "Watch":
        if self.show:
            self._thread = threading.Thread(target=self._run, name="unicurate-units-watch", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        from tqdm import tqdm

        plan = self.claim.plan
        # disable=None: no bar when stderr is not a terminal (CI logs, pipes); the units lines still say it
        with tqdm(total=plan.n_rows, initial=sum(self.claim.done.values()), unit=" rows", unit_scale=True,
                  dynamic_ncols=True, mininterval=1.0, desc=self._desc(), leave=True, disable=None) as bar:
            while True:
                stopping = self._stop.wait(self.every)
                new = [i for i in store.record_files(self.out_dir) if i < plan.n_units and i not in self.seen]
                if new:
                    self.seen.update(new)
                    bar.set_description_str(self._desc(), refresh=False)
                    bar.update(sum(plan.unit(i).rows for i in new))
                if stopping:
                    break

    def _desc(self) -> str:
        return f"units {len(self.seen)}/{self.claim.plan.n_units}"

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return False
