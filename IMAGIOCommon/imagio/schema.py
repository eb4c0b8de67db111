"""One small declarative validator for the JSON documents IMAGIO reads (model cards, device libraries).

A schema is built from a few rule objects and checked with :func:`validate`, which returns the value
(numbers as float/int, defaults filled in) or raises the one-line :class:`~imagio.errors.ImagioError`
naming the file, the key path and the rule::

    from imagio.schema import Bool, Enum, Int, List, Num, Obj, RelPath, Str, Less, validate

    SETTING = Obj({"power_w": Num(min=0, max=1000, unit="W"),
                   "time_s": Num(min=0, max=7200, unit="s", min_inclusive=False),
                   "zone_long_mm": Num(min=0, max=200, unit="mm", min_inclusive=False)},
                  required=("power_w", "time_s", "zone_long_mm"))
    LIBRARY = Obj({"devices": List(Obj({"id": Str(min_len=1, max_len=64),
                                        "modality": Enum("microwave", "radiofrequency", "cryo"),
                                        "settings": List(SETTING, min_len=1, max_len=1000)},
                                       required=("id", "modality", "settings")), min_len=1, max_len=500)},
                  required=("devices",))
    data = validate(LIBRARY, load_json(path, max_bytes=1 << 20), source=path)
    # -> ImagioError: "devices.json: devices[2].settings[0].time_s: must be more than 0 s, got -5. Fix the file"

Rules: :class:`Num` (finite; range; ``integer``), :class:`Int`, :class:`Str`, :class:`Bool`, :class:`Enum`,
:class:`List` (item rule, length bounds, exact length, product of the items bounded, unique items),
:class:`Obj` (fields, required keys, defaults, unknown keys allowed or refused, cross-field checks such as
:class:`Less`), :class:`Optional` (also null), :class:`OneOf`, :class:`Any`, and :class:`RelPath` (a
relative path that must stay inside the document's folder). :func:`load_json` reads a bounded file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ImagioError

_MISSING = object()


class SchemaError(Exception):
    """A rule broken at ``path`` (raised inside the rules, turned into ImagioError by :func:`validate`)."""

    def __init__(self, path: str, rule: str):
        super().__init__(f"{path}: {rule}")
        self.path, self.rule = path, rule


@dataclass
class Context:
    source: str = "document"
    base_dir: Path | None = None


def _show(v) -> str:
    text = json.dumps(v) if isinstance(v, (str, list, dict, bool)) or v is None else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(v) -> str:
    return {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


class Rule:
    def check(self, value, path: str, ctx: Context):  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class Any(Rule):
    def check(self, value, path, ctx):
        return value


class Bool(Rule):
    def check(self, value, path, ctx):
        if not isinstance(value, bool):
            raise SchemaError(path, f"must be true or false, got {_show(value)}")
        return value


class Num(Rule):
    """A finite JSON number (never a string or true/false) within [min, max]."""

    def __init__(self, min=None, max=None, *, integer: bool = False, unit: str = "", min_inclusive: bool = True,
                 max_inclusive: bool = True):
        self.min, self.max, self.integer, self.unit = min, max, integer, unit
        self.min_inclusive, self.max_inclusive = min_inclusive, max_inclusive

    def describe(self) -> str:
        u = f" {self.unit}" if self.unit else ""
        parts = []
        if self.min is not None:
            parts.append(f"{'at least' if self.min_inclusive else 'more than'} {self.min:g}{u}")
        if self.max is not None:
            parts.append(f"{'at most' if self.max_inclusive else 'less than'} {self.max:g}{u}")
        return ("a whole number" if self.integer else "a number") + (" " + " and ".join(parts) if parts else "")

    def check(self, value, path, ctx):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(path, f"must be {self.describe()}, got {_kind(value)} {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SchemaError(path, f"must be a finite number, got {_show(value)}")
        if self.integer:
            if isinstance(value, float):
                if value != int(value):
                    raise SchemaError(path, f"must be a whole number, got {_show(value)}")
                value = int(value)
        elif isinstance(value, int):
            if abs(value) > 1e308:
                raise SchemaError(path, f"must be {self.describe()}, got a number too large")
            value = float(value)
        lo, hi = self.min, self.max
        if (lo is not None and (value < lo or (value == lo and not self.min_inclusive))) or \
                (hi is not None and (value > hi or (value == hi and not self.max_inclusive))):
            raise SchemaError(path, f"must be {self.describe()}, got {_show(value)}")
        return value


class Int(Num):
    def __init__(self, min=None, max=None, **kw):
        super().__init__(min, max, integer=True, **kw)


class Str(Rule):
    def __init__(self, min_len: int = 0, max_len: int = 10_000):
        self.min_len, self.max_len = min_len, max_len

    def check(self, value, path, ctx):
        if not isinstance(value, str):
            raise SchemaError(path, f"must be a string, got {_kind(value)} {_show(value)}")
        if len(value) < self.min_len:
            raise SchemaError(path, "must not be empty" if self.min_len == 1 else
                              f"must have at least {self.min_len} characters")
        if len(value) > self.max_len:
            raise SchemaError(path, f"must have at most {self.max_len} characters, got {len(value)}")
        return value


class Enum(Rule):
    """One of ``values``; ``name`` words the error ("unknown normalisation scheme 'X': use one of ...")."""

    def __init__(self, *values, name: str = ""):
        self.values, self.name = values, name

    def check(self, value, path, ctx):
        try:
            ok = not isinstance(value, bool) and value in self.values
        except TypeError:  # an unhashable JSON value (list, object)
            ok = False
        if not ok:
            choices = ", ".join(_show(v) for v in self.values)
            if self.name:
                raise SchemaError(path, f"unknown {self.name} {_show(value)}: use one of {choices}")
            raise SchemaError(path, f"must be one of {choices}, got {_show(value)}")
        return value


class Optional(Rule):
    """``rule``, or null."""

    def __init__(self, rule: Rule):
        self.rule = rule

    def check(self, value, path, ctx):
        return None if value is None else self.rule.check(value, path, ctx)


class OneOf(Rule):
    def __init__(self, *rules: Rule):
        self.rules = rules

    def check(self, value, path, ctx):
        errors = []
        for r in self.rules:
            try:
                return r.check(value, path, ctx)
            except SchemaError as e:
                errors.append(e.rule)
        raise SchemaError(path, " or ".join(dict.fromkeys(errors)))


class List(Rule):
    """A list of ``item``; ``length`` exact, or between ``min_len`` and ``max_len``; ``product_max`` bounds the
    product of numeric items (e.g. patch voxels); ``unique`` refuses repeated items."""

    def __init__(self, item: Rule | None = None, length: int | None = None, min_len: int = 0, max_len: int = 100_000,
                 product_max: float | None = None, unique: bool = False, what: str = "items"):
        self.item, self.length, self.min_len, self.max_len = item or Any(), length, min_len, max_len
        self.product_max, self.unique, self.what = product_max, unique, what

    def check(self, value, path, ctx):
        if not isinstance(value, list):
            raise SchemaError(path, f"must be a list, got {_kind(value)} {_show(value)}")
        n = len(value)
        if self.length is not None and n != self.length:
            raise SchemaError(path, f"must have exactly {self.length} {self.what}, got {n}")
        if n < self.min_len:
            raise SchemaError(path, f"must have at least {self.min_len} {self.what}, got {n}")
        if n > self.max_len:
            raise SchemaError(path, f"must have at most {self.max_len} {self.what}, got {n}")
        out = [self.item.check(v, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
        if self.product_max is not None:
            prod = math.prod(out)
            if prod > self.product_max:
                raise SchemaError(path, f"the product of the {self.what} must be at most {self.product_max:g}, "
                                        f"got {prod:g}")
        if self.unique:
            seen = set()
            for i, v in enumerate(out):
                key = json.dumps(v, sort_keys=True)
                if key in seen:
                    raise SchemaError(f"{path}[{i}]", f"repeats {_show(v)}")
                seen.add(key)
        return out


class Check:
    """A cross-field rule of an :class:`Obj`: ``__call__(obj, path)`` raises SchemaError."""

    def __call__(self, obj: dict, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Less(Check):
    """``obj[a] < obj[b]`` (or ``<=`` with ``equal=True``), when both are present."""

    def __init__(self, a: str, b: str, equal: bool = False):
        self.a, self.b, self.equal = a, b, equal

    def __call__(self, obj, path):
        if self.a in obj and self.b in obj and obj[self.a] is not None and obj[self.b] is not None:
            x, y = obj[self.a], obj[self.b]
            if not (x <= y if self.equal else x < y):
                raise SchemaError(f"{path}.{self.a}" if path else self.a,
                                  f"must be {'at most' if self.equal else 'less than'} {self.b} ({_show(y)}), "
                                  f"got {_show(x)}")


class Where(Check):
    """A named predicate on the object: ``Where(lambda o: ..., "key", "rule in words")``."""

    def __init__(self, predicate, key: str, rule: str):
        self.predicate, self.key, self.rule = predicate, key, rule

    def __call__(self, obj, path):
        if not self.predicate(obj):
            raise SchemaError(f"{path}.{self.key}" if path else self.key, self.rule)


class Obj(Rule):
    """A JSON object: ``fields`` name -> rule; ``required`` keys; ``defaults`` filled in when absent;
    ``extra`` "allow" (kept as is) or "forbid"; ``checks`` run on the checked object."""

    def __init__(self, fields: dict[str, Rule], required=(), defaults: dict | None = None, extra: str = "allow",
                 checks=(), max_keys: int = 10_000):
        self.fields, self.required, self.defaults = fields, tuple(required), dict(defaults or {})
        self.extra, self.checks, self.max_keys = extra, tuple(checks), max_keys

    def check(self, value, path, ctx):
        if not isinstance(value, dict):
            raise SchemaError(path or "(top level)", f"must be an object, got {_kind(value)} {_show(value)}")
        if len(value) > self.max_keys:
            raise SchemaError(path or "(top level)", f"must have at most {self.max_keys} keys, got {len(value)}")
        for key in self.required:
            if key not in value:
                raise SchemaError(f"{path}.{key}" if path else key, "is required but missing")
        out = {}
        for key, v in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in self.fields:
                out[key] = self.fields[key].check(v, sub, ctx)
            elif self.extra == "forbid":
                raise SchemaError(sub, f"is not a known key (known: {', '.join(self.fields)})")
            else:
                out[key] = v
        for key, d in self.defaults.items():
            out.setdefault(key, d)
        for c in self.checks:
            c(out, path)
        return out


class RelPath(Rule):
    """A relative path (string) that resolves inside the document's folder; optional suffix and existence."""

    def __init__(self, suffix: str | None = None, must_exist: bool = False, max_len: int = 1000):
        self.suffix, self.must_exist, self.max_len = suffix, must_exist, max_len

    def check(self, value, path, ctx):
        if not isinstance(value, str) or not value.strip():
            raise SchemaError(path, f"must be a file name (a string), got {_kind(value)} {_show(value)}")
        if len(value) > self.max_len or "\0" in value:
            raise SchemaError(path, "is not a usable file name")
        if os.path.isabs(value) or value.startswith("~"):
            raise SchemaError(path, f"must be a path relative to the file's folder, got {_show(value)}")
        if self.suffix and not value.lower().endswith(self.suffix):
            raise SchemaError(path, f"must name a {self.suffix} file, got {_show(value)}")
        if ctx.base_dir is not None:
            base = Path(ctx.base_dir).resolve()
            target = (base / value).resolve()
            if not (target == base or target.is_relative_to(base)):
                raise SchemaError(path, f"{_show(value)} points outside the file's folder {base}")
            if self.must_exist and not target.is_file():
                raise SchemaError(path, f"{_show(value)} does not exist beside the file")
            return target
        return value


def validate(schema: Rule, data, source="document", base_dir=None, hint: str = "Fix the file"):
    """``data`` checked against ``schema`` (the checked copy); ImagioError "<source>: <key path>: <rule>"."""
    ctx = Context(str(source), Path(base_dir) if base_dir is not None else None)
    try:
        return schema.check(data, "", ctx)
    except SchemaError as e:
        raise ImagioError(f"{source}: {e.path or '(top level)'}: {e.rule}", hint) from None
    except RecursionError:
        raise ImagioError(f"{source}: nested too deeply", hint) from None


def load_json(path, max_bytes: int = 1 << 20, what: str = "file"):
    """Read a JSON file of at most ``max_bytes``; NaN/Infinity literals and bad UTF-8 are refused."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise ImagioError(f"{what} {p} is not a regular file", "Give the JSON file itself")
        if size > max_bytes:
            raise ImagioError(f"{what} {p} is {size / 1e6:.1f} MB, more than the {max_bytes / 1e6:.1f} MB allowed",
                              "Give the JSON file itself, not data")
        text = p.read_bytes()[: max_bytes + 1].decode("utf-8")

        def _no_constant(name):
            raise ValueError(f"{name} is not a JSON number")

        return json.loads(text, parse_constant=_no_constant)
    except ImagioError:
        raise
    except FileNotFoundError:
        raise ImagioError(f"{what} {p} does not exist", "Check the path") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ImagioError(f"{what} {p} is not readable JSON ({str(e)[:120]})", "Check the file") from None
