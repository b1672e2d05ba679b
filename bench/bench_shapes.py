#!/usr/bin/env python3
"""Vendor shapes: the hand-written ``streams.normalize`` vs validating with pydantic models.

The records are the vendors' seed samples as the tests hold them
(``tests/test_streams_samples.all_samples()``: every Activity Sync kind and every Altcraft
event type the seeds show, quirks included), as JSON lines. On one core, in one process, it
times per record:

  (a) ``normalize(raw)`` — the hot path: decode, validate (SPEC §7), build the outcome;
  (b) ``orjson.loads(raw)`` alone — decoding, which any path pays;
  (c) ``loads`` + the pydantic models of the former ``streams/schemas.py`` (every vendor
      field, per event family), read from git history when the file is no longer in the tree;
  (d) ``loads`` + lean pydantic models of the SPEC §7 envelope fields only (defined below,
      for the measurement: the cheapest pydantic validation could be).

Each loop runs for ``--seconds`` (best of ``--repeat``); prints events/s and µs/event, and the
cost pydantic adds over ``loads`` (what a worker would pay per event on top of decoding).

    python bench/bench_shapes.py [--seconds 0.3] [--repeat 3] [--schemas-rev REV]
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.kinds import AC_LIFECYCLE, AS_DEPRECATED, AS_LIFECYCLE, AS_NON_LIFECYCLE, altcraft_non_lifecycle  # noqa: E402
from streams.normalize import normalize  # noqa: E402
from streams.timeparse import parse_ts_us  # noqa: E402
from tests.test_streams_samples import all_samples  # noqa: E402


# ---- (c) the former streams/schemas.py ------------------------------------------------------------
def load_schemas(rev: str | None) -> tuple[Any, str]:
    """The ``streams.schemas`` module: from the working tree if it is there, else from git."""
    here = ROOT / "streams" / "schemas.py"
    if rev is None and here.exists():
        source, origin = here.read_text(), "working tree"
    else:
        if rev is None:  # the parent of the commit that deleted it, else HEAD (deleted in the tree only)
            deleted = subprocess.run(["git", "log", "-1", "--format=%H", "--diff-filter=D", "--", "streams/schemas.py"],
                                     cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
            rev = f"{deleted}^" if deleted else "HEAD"
        source = subprocess.run(["git", "show", f"{rev}:streams/schemas.py"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout
        origin = f"git {rev}"
    with tempfile.TemporaryDirectory(prefix="bench-shapes-") as tmp:
        path = Path(tmp) / "schemas.py"
        path.write_text(source)
        # a submodule name of the real package: its relative imports (.kinds, .timeparse) resolve there
        spec = importlib.util.spec_from_file_location("streams._bench_schemas", path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # pydantic resolves the (postponed) annotations through it
        spec.loader.exec_module(mod)
    return mod, origin


# ---- (d) lean models: the SPEC §7 required fields, nothing else ------------------------------------
def _ts(v: str) -> str:
    if parse_ts_us(v) is None:
        raise ValueError("timestamp")
    return v


def _account(v: Any) -> Any:
    if type(v) is int or (type(v) is str and v.isascii() and v.isdigit()):
        return v
    raise ValueError("account_id")


Ts = Annotated[StrictStr, AfterValidator(_ts)]


class _Lean(BaseModel):
    model_config = ConfigDict(extra="allow")


class _AsData(_Lean):
    messageId: StrictStr | None = None


class LeanActivitySync(_Lean):
    version: Literal["1.0"] | None = None
    timestamp: Ts
    tenantId: Annotated[StrictStr, AfterValidator(lambda v: v or _fail("tenantId"))]
    kind: StrictStr
    data: Any = None

    def model_post_init(self, _ctx: Any) -> None:
        if self.kind in AS_NON_LIFECYCLE:
            return
        if self.kind not in AS_LIFECYCLE or self.kind in AS_DEPRECATED:
            raise ValueError("kind")
        data = _AsData.model_validate(self.data)
        if not (data.messageId or "").strip():
            raise ValueError("messageId")


class _AcData(_Lean):
    send_message_id: StrictInt | StrictStr | None = None


class LeanAltcraft(_Lean):
    event_type: StrictStr
    event_date: Ts
    account_id: Annotated[Any, AfterValidator(_account)]
    is_test: StrictBool | None = None
    event_data: _AcData | None = None

    def model_post_init(self, _ctx: Any) -> None:
        lifecycle = self.event_type in AC_LIFECYCLE
        if not lifecycle and not altcraft_non_lifecycle(self.event_type):
            raise ValueError("event_type")
        mid = self.event_data.send_message_id if self.event_data else None
        if lifecycle and not self.is_test and not str(mid if mid is not None else "").strip():
            raise ValueError("send_message_id")


def _fail(what: str) -> Any:
    raise ValueError(what)


_LEAN_AS = TypeAdapter(LeanActivitySync)
_LEAN_AC = TypeAdapter(LeanAltcraft)


# ---- timing ---------------------------------------------------------------------------------------
def rate(fn: Callable[[bytes], object], lines: list[bytes], seconds: float, repeat: int) -> float:
    """Best events/s of ``repeat`` runs of at least ``seconds`` each."""
    best = 0.0
    for _ in range(repeat):
        gc.collect()
        n, t0 = 0, time.perf_counter()
        while True:
            for raw in lines:
                fn(raw)
            n += len(lines)
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
        best = max(best, n / dt)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.3, help="minimum time per loop (default 0.3)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N loops (default 3)")
    ap.add_argument("--schemas-rev", help="git revision to read streams/schemas.py from (default: auto)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args(argv)

    schemas, origin = load_schemas(args.schemas_rev)
    lines = [orjson.dumps(s) for s in all_samples()]

    def full(raw: bytes) -> object:
        obj = orjson.loads(raw)
        try:
            return (schemas.parse_altcraft if "event_type" in obj else schemas.parse_activity_sync)(obj)
        except ValidationError:
            return None

    def lean(raw: bytes) -> object:
        obj = orjson.loads(raw)
        try:
            return (_LEAN_AC if "event_type" in obj else _LEAN_AS).validate_python(obj)
        except ValidationError:
            return None

    # every sample is valid: each path must accept all of them, or the timing compares different work
    for name, fn in (("schemas.py", full), ("lean", lean)):
        refused = [raw[:60] for raw in lines if fn(raw) is None]
        assert not refused, (name, refused)
    assert all(type(normalize(raw)).__name__ != "Rejected" for raw in lines)

    figures = {
        "normalize": rate(normalize, lines, args.seconds, args.repeat),
        "loads": rate(orjson.loads, lines, args.seconds, args.repeat),
        "loads+schemas.py": rate(full, lines, args.seconds, args.repeat),
        "loads+lean": rate(lean, lines, args.seconds, args.repeat),
    }
    us = {k: 1e6 / v for k, v in figures.items()}
    print(f"{len(lines)} seed sample records ({sum(map(len, lines)) // len(lines)} bytes mean); "
          f"schemas.py from {origin}; best of {args.repeat} x {args.seconds} s")
    for k, v in figures.items():
        extra = "" if k in ("normalize", "loads") else \
            f"   pydantic alone {us[k] - us['loads']:.2f} µs; {us[k] - us['normalize']:+.2f} µs/event vs normalize"
        print(f"  {k:<18} {v:>12,.0f} events/s  {us[k]:6.2f} µs/event{extra}")
    print(f"  normalize over loads: {us['normalize'] - us['loads']:.2f} µs/event")
    if args.json:
        print(json.dumps({"records": len(lines), "events_per_s": figures, "us_per_event": us}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
