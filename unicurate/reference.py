"""The recipe reference and the reason-code tables, rendered as Markdown from the code.

``python -m unicurate.reference`` prints docs/recipes.md; ``--write`` writes it and refreshes the generated
tables in docs/reasons.md (between their ``<!-- BEGIN GENERATED ... -->`` / ``<!-- END GENERATED ... -->``
markers); ``--check`` exits 1 when a file differs from what the code says (tests/test_docs.py does the same).

Everything here is derived: the sections, fields, types, defaults, bounds and descriptions come from the
pydantic recipe models in :mod:`unicurate.config` (``config.RECIPES``), the reason codes, their stages and
their meanings from :mod:`unicurate.schema`. Nothing heavy is imported (no torch, no Beam).
"""

from __future__ import annotations

import argparse
import enum
import inspect
import io
import json
import math
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
RECIPES_DOC = "docs/recipes.md"
REASONS_DOC = "docs/reasons.md"

# ------------------------------------------------------------------ types, defaults, bounds


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _args(tp: Any) -> tuple:
    return typing.get_args(tp) or ()


def _strip_none(tp: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None was allowed)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType") \
            or type(tp).__name__ == "UnionType":
        args = [a for a in _args(tp) if a is not type(None)]
        optional = len(args) < len(_args(tp))
        if len(args) == 1:
            return args[0], optional
        return typing.Union[tuple(args)], optional
    return tp, False


_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", Any: "any"}


def type_name(tp: Any) -> str:
    """A readable name for a field annotation."""
    inner, optional = _strip_none(tp)
    text = _type_name(inner)
    return f"{text} or null" if optional else text


def _type_name(tp: Any) -> str:
    if tp in _NAMES:
        return _NAMES[tp]
    if _is_model(tp):
        return "section"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in tp)
    origin, args = typing.get_origin(tp), _args(tp)
    if origin is typing.Literal:
        if len(args) == 1:
            return f"`{_fmt(args[0])}`"
        return "one of " + ", ".join(f"`{_fmt(a)}`" for a in args)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, set, frozenset):
        return f"list of {_plural(args[0])}" if args else "list"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_plural(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict:
        if len(args) == 2 and _is_model(args[1]):
            return "mapping of name to section"
        return "mapping" if not args or args[1] is Any else f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    name = _type_name(tp)
    return {"string": "strings", "integer": "integers", "number": "numbers", "boolean": "booleans"}.get(name, name)


def _fmt(value: Any) -> str:
    """A value as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, enum.Enum):
        return _fmt(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"))
    return str(value)


def bounds(field: Any) -> str:
    """Numeric bounds and patterns of a field, e.g. ``>= 1, <= 10``."""
    out = []
    for meta in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("multiple_of", "multiple of"),
                          ("min_length", "min length"), ("max_length", "max length"), ("pattern", "matches")):
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"{sym} `{value}`" if attr == "pattern" else f"{sym} {_fmt(value)}")
    return ", ".join(out)


_MISSING = object()


def _default(field: Any, instance: BaseModel | None, name: str) -> Any:
    """The field's default: from the section's default instance when there is one, else from the field."""
    if instance is not None:
        return getattr(instance, name)
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        try:
            return field.default_factory()
        except TypeError:  # factories that take the validated data
            return _MISSING
    return _MISSING


def _doc(cls: type) -> str:
    """The first paragraph of a class's own docstring (not an inherited one), reST roles made Markdown."""
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return ""
    text = " ".join(inspect.cleandoc(doc).split("\n\n", 1)[0].split())
    return re.sub(r":[a-z]+:`", "`", text).replace("``", "`")


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


# ------------------------------------------------------------------ recipe sections


def _sections(model: type[BaseModel], prefix: str, instance: BaseModel | None, parent_doc: str = "",
              optional: bool = False) -> list[tuple[str, type[BaseModel], BaseModel | None, str, bool]]:
    """Every section under ``model`` (depth first): (dotted path, class, default instance, doc, optional)."""
    found = [(prefix, model, instance, parent_doc, optional)]
    for name, field in model.model_fields.items():
        inner, opt = _strip_none(field.annotation)
        path = f"{prefix}.{name}" if prefix else name
        value = _default(field, instance, name)
        if _is_model(inner):
            sub_instance = value if isinstance(value, BaseModel) else None
            found += _sections(inner, path, sub_instance, field.description or "", opt and sub_instance is None)
        elif typing.get_origin(inner) is dict and len(_args(inner)) == 2 and _is_model(_args(inner)[1]):
            found += _sections(_args(inner)[1], f"{path}.<name>", None, field.description or "", False)
    return found


def _field_rows(model: type[BaseModel], instance: BaseModel | None, prefix: str = "",
                execution: tuple[str, ...] = ()) -> list[str]:
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        mark = " *(execution setting)*" if dotted in execution else ""
        inner, opt = _strip_none(field.annotation)
        default = _default(field, instance, name)
        if _is_model(inner):
            kind = "optional section (absent or null: off)" if opt and default is None else "section"
            rows.append(f"| `{name}` | {kind} | {'`null`' if default is None else 'see below'} | "
                        f"{_cell(field.description or _doc(inner))}{mark} |")
            continue
        tname = type_name(field.annotation)
        b = bounds(field)
        if b:
            tname += f"; {b}"
        if default is _MISSING:
            dtext = "**required**"
        elif isinstance(default, dict) and not default:
            dtext = "`{}`"
        else:
            dtext = f"`{_cell(_fmt(default))}`"
        rows.append(f"| `{name}` | {_cell(tname)} | {dtext} | {_cell(field.description or '')}{mark} |")
    return rows


_INTRO = """\
# Recipe reference

<!-- GENERATED by `python -m unicurate.reference --write` from the pydantic models in unicurate/config.py;
     edit those (field descriptions, defaults, bounds), not this file. -->

A recipe is a YAML file validated in full before any work starts (`unicurate/config.py`, pydantic). An
unknown key, a wrong type or a value out of bounds stops the run with exit code 2 and one message that names
the field by its dotted path, what was given and what is allowed (for an unknown key, a "did you mean" hint
and the list of allowed fields). `unicurate run RECIPE --set PATH=VALUE` overrides any field below by its
dotted path (the value is read as YAML), e.g. `--set filters.aesthetic.min_score=5.5`;
`--input` and `--output` set `input.path` and `output.path`.

Inputs are read-only: a run never writes, truncates or renames an input path, whatever the recipe says;
everything it writes is under `output.path` (plus the model cache, and the job file of a `--dry-run`).

The recipe's `pipeline` field picks the kind: {kinds}. Examples: `configs/quickstart.yaml` (the offline demo),
`configs/laion-style.yaml` (a real curate run), `configs/synthesize.yaml` and `configs/synthesize-real.yaml`.

A run's manifest records the resolved recipe, its `recipe_hash` and its `execution_hash`. Fields marked
*(execution setting)* decide only where and how a run goes (paths, names, shard layout, runner, workers, batch
sizes, threads, device, precision): they make up `execution_hash`. Every other field is part of the data recipe,
whose hash, with the inputs' identity (each input file's base name and size), is `recipe_hash`: the same data
recipe hashes the same from any folder, on any machine, with any number of workers.

A section marked *optional section* is off when it is absent (or `null`); writing it (even as `{{}}`) turns it
on with the defaults shown. A field whose type ends in "or null" accepts `null` for "not set".
"""


def render_recipes() -> str:
    """docs/recipes.md: every recipe kind, section and field."""
    from unicurate import config

    recipes: dict[str, type[BaseModel]] = dict(config.RECIPES)
    out = [_INTRO.format(kinds=", ".join(f"`{k}`" for k in recipes)).rstrip("\n")]
    documented: dict[tuple[str, type], tuple[str, Any]] = {}  # (top-level name, class) -> (kind, default dump)
    for kind, model in recipes.items():
        out += ["", f"## `pipeline: {kind}`"]
        doc = _doc(model)
        if doc:
            out += ["", doc]
        out += ["", "Top-level fields:", ""] + _field_rows(model, None, "", tuple(getattr(model, "EXECUTION_FIELDS", ())))
        for path, cls, instance, parent_doc, optional in _sections(model, "", None)[1:]:
            top = path.split(".", 1)[0]
            top_cls = _strip_none(model.model_fields[top].annotation)[0]
            earlier = documented.get((top, top_cls))
            if earlier is not None and earlier[0] != kind:
                if path == top:  # the same section class as in an earlier recipe kind: say so, once
                    dump = instance.model_dump(mode="json") if instance is not None else None
                    diff = {k: v for k, v in (dump or {}).items() if (earlier[1] or {}).get(k) != v}
                    note = f"The same fields as in the `{earlier[0]}` recipe's `{top}` section above"
                    note += (", with these defaults: " + ", ".join(f"`{k}: {_fmt(v)}`" for k, v in diff.items())
                             + ".") if diff else "."
                    out += ["", f"### `{path}`", "", note]
                continue
            if path == top:
                documented[(top, cls)] = (kind, instance.model_dump(mode="json") if instance is not None else None)
            out += ["", f"### `{path}`" if path == top else f"#### `{path}`"]
            own, given = _sentence(_doc(cls)), _sentence(parent_doc)
            text = own if given.rstrip(".") in own else " ".join(t for t in (own, given) if t)
            if optional:
                text = ("Optional section: absent or null = off. " + text).strip()
            if path in getattr(model, "EXECUTION_FIELDS", ()):
                text = (text + " The whole section is an *execution setting* (not part of `recipe_hash`).").strip()
            if path.endswith(".<name>"):
                text = ("One entry per name, each with these fields. " + text).strip()
            if text:
                out += ["", text]
            out += [""] + _field_rows(cls, instance, path, tuple(getattr(model, "EXECUTION_FIELDS", ())))
    out += _registry_tables()
    return "\n".join(out) + "\n"


def _registry_tables() -> list[str]:
    """The filters and edit types as their registries declare them (skipped when a registry is absent)."""
    from unicurate.filters import registry
    from unicurate.synthesis import edit_types

    out: list[str] = []
    if registry.specs():
        out += ["", "## Filters", "",
                "Every curate filter, as declared in its module (`unicurate/filters/registry.py`). A model filter "
                "runs when its section is in the recipe; `whatif --set` can change the bounds listed.", "",
                "| filter | stage | recipe | models (default section) | columns | reasons | what-if bounds |",
                "|---|---|---|---|---|---|---|"]
        for spec in registry.specs():
            where = f"`filters.{spec.name}`" if spec.config is not None else "`filters` fields"
            try:
                models = spec.models(spec.config()) if spec.config is not None else spec.models(None)
            except Exception:  # a section with required fields, or models that depend on what the recipe sets
                models = ()
            bounds_ = ", ".join(f"`{t.column}{t.op}` (`{t.field}`)" for t in spec.thresholds)
            out.append(f"| `{spec.name}` | {spec.stage} | {where} | {', '.join(f'`{m}`' for m in models)} | "
                       f"{', '.join(f'`{c.name}`' for c in spec.columns)} | "
                       f"{', '.join(f'`{r.code}`' for r in spec.reasons)} | {bounds_} |")
    if edit_types.REGISTRY:
        out += ["", "## Edit types", "",
                "Every value of `edits.types`, as declared in its module (`unicurate/synthesis/edit_types/`), in "
                "rotation order. A local edit may change only its dilated mask (`checks.max_change_outside`); "
                "re-detection (`checks.redetect`) expects the phrase gone from, or present in, the object's box.",
                "", "| edit type | local | re-detection | instruction templates |", "|---|---|---|---|"]
        for spec in edit_types.REGISTRY.values():
            out.append(f"| `{spec.name}` | {'yes' if spec.local else 'no'} | {spec.redetect or ''} | "
                       f"{len(spec.templates)} |")
    return out


# ------------------------------------------------------------------ reason codes


def _enum_comments(cls: type[enum.Enum]) -> dict[str, tuple[str, str]]:
    """Per member name: (the group comment above it, its trailing comment), read from the source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found: dict[str, tuple[str, str]] = {}
    group = ""
    pending: str | None = None
    line_of_member: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if tok.start[0] in line_of_member:
                name = line_of_member[tok.start[0]]
                found[name] = (found[name][0], text)
            else:
                group = text
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and pending is None:
            pending = tok.string
        elif tok.type == tokenize.OP and tok.string == "=" and pending is not None:
            if pending in cls.__members__:
                line_of_member[tok.start[0]] = pending
                found[pending] = (group, "")
            pending = None
        elif tok.type in (tokenize.NEWLINE, tokenize.NL):
            pending = None
    return found


def reason_doc(member: enum.Enum) -> str:
    """What a reason code means: its ``doc`` (``schema.Reason``: declared by the core or by the filter that gives
    it), else its comment in schema.py (``schema.SynReason``)."""
    doc = getattr(member, "doc", None)
    if isinstance(doc, str) and doc:
        return doc
    return _enum_comments(type(member)).get(member.name, ("", ""))[1]


def _syn_level(member: enum.Enum) -> str:
    level = getattr(member, "level", None)
    if isinstance(level, enum.Enum):
        level = level.value
    if isinstance(level, str) and level:
        return level
    group = _enum_comments(type(member)).get(member.name, ("", ""))[0]
    return group.split()[0] if group else ""


# Cases of the bad-input corpus (tests/hostileweb.py) that end with each code: illustrations for the
# reader, not definitions (those are the schema's). A code without an entry gets an empty cell.
EXAMPLES: dict[str, str] = {
    "invalid_input": "an empty url cell; a line that is not JSON or nested 100000 deep; `\"url\": 5`; "
                     "a corrupt Parquet data page",
    "duplicate_url": "a url listed twice",
    "invalid_url": "`http:///x.jpg`, `http://[::1/x.jpg`, port 99999",
    "unsupported_scheme": "`file:///etc/passwd`, `ftp://`, `data:`, `javascript:`; a 302 to `file://`",
    "blocked_address": "`10.0.0.1`, `169.254.169.254`, `[fd00:ec2::254]`, `[::ffff:169.254.169.254]`, "
                       "`2852039166`, `[::1]`, `0.0.0.0`, `2130706434`; a name resolving to 127.0.0.3 or "
                       "169.254.169.254; a redirect to any of these",
    "http_error": "403, 404, 429, 500, 503 (the status is in `error`)",
    "too_many_redirects": "`/a` -> `/b` -> `/a`; 12 hops",
    "timeout": "headers after 3 s; a body dripped a byte at a time (`download.max_seconds`)",
    "connection_error": "a TCP reset; closed with no answer; a body shorter than its `Content-Length`; "
                        "an unknown host",
    "too_large": "`Content-Length: 50 GiB`; an endless chunked body; 2 MiB of gzip that inflates to 2 GiB",
    "robots_disallowed": "`X-Robots-Tag: noai`",
    "empty_response": "`Content-Length: 0`",
    "download_error": "`Content-Encoding: br`; `Content-Encoding: gzip` on a plain JPEG",
    "not_an_image": "HTML served as `image/jpeg`; SVG",
    "decode_error": "a truncated JPEG or PNG; a body cut short by a lying `Content-Length`; a resized size past "
                    "the output format's limit (JPEG 65500 px, WebP 16383 px per side)",
    "decompression_bomb": "a 300-byte PNG claiming 100000x100000; upscaling a thin image past the limit with "
                          "`resize_only_if_bigger: false`",
    "too_small": "a 1x1 PNG",
    "aspect_ratio": "20000x10 (also `too_small`)",
    "caption_too_short": "an empty caption",
    "caption_too_long": "a 100 KB caption",
    "invalid_caption": "Latin-1 bytes in a CSV; ANSI escapes; `\\u0000` or a lone surrogate in JSON",
    "duplicate": "the same JPEG under two urls",
}


def render_reason_table() -> str:
    """The curate reason codes: code, stage, meaning, example."""
    from unicurate.schema import Reason

    rows = ["| code | stage | meaning | for example |", "|---|---|---|---|"]
    for member in Reason:
        stage = member.stage.value if isinstance(member.stage, enum.Enum) else str(member.stage)
        rows.append(f"| `{member.value}` | {stage} | {_cell(reason_doc(member))} | "
                    f"{_cell(EXAMPLES.get(member.value, ''))} |")
    return "\n".join(rows) + "\n"


def render_syn_reason_table() -> str:
    """The synthesis reason codes: code, level, meaning."""
    from unicurate.schema import SynReason

    rows = ["| code | level | meaning |", "|---|---|---|"]
    for member in SynReason:
        rows.append(f"| `{member.value}` | {_syn_level(member)} | {_cell(reason_doc(member))} |")
    return "\n".join(rows) + "\n"


# generated blocks inside hand-written pages: marker name -> renderer
BLOCKS = {"reasons": render_reason_table, "syn-reasons": render_syn_reason_table}


def _begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED {name}: python -m unicurate.reference --write -->"


def _end(name: str) -> str:
    return f"<!-- END GENERATED {name} -->"


def fill_blocks(text: str) -> str:
    """``text`` with every generated block it marks replaced by the renderer's current output."""
    for name, render in BLOCKS.items():
        begin, end = _begin(name), _end(name)
        if begin not in text:
            continue
        head, rest = text.split(begin, 1)
        if end not in rest:
            raise ValueError(f"{begin!r} without {end!r}")
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{render()}{end}{tail}"
    return text


def expected_files(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file, with what it should hold."""
    files = {root / RECIPES_DOC: render_recipes()}
    reasons = root / REASONS_DOC
    if reasons.exists():
        files[reasons] = fill_blocks(reasons.read_text(encoding="utf-8"))
    return files


def stale_files(root: Path = ROOT) -> list[Path]:
    """The generated files whose content differs from what the code says."""
    return [p for p, text in expected_files(root).items()
            if not p.exists() or p.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unicurate.reference", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {RECIPES_DOC} and the generated tables in "
                                                           f"{REASONS_DOC}")
    mode.add_argument("--check", action="store_true", help="exit 1 when a generated file is out of date")
    mode.add_argument("--reasons", action="store_true", help="print the reason-code tables instead")
    args = parser.parse_args(argv)
    if args.write:
        for path, text in expected_files().items():
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path.relative_to(ROOT)}")
        return 0
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python -m unicurate.reference --write",
                  file=sys.stderr)
        return 1 if stale else 0
    if args.reasons:
        sys.stdout.write(render_reason_table() + "\n" + render_syn_reason_table())
        return 0
    sys.stdout.write(render_recipes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
