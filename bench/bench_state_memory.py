#!/usr/bin/env python3
"""Bytes per in-flight message state, 1,000,000 messages.

Builds the lifecycle state of ``--messages`` generated messages (``agents.generate`` traffic,
folded by ``streams.report.Replay`` exactly as the lifecycle table holds it: ``message key ->
MessageState.to_bytes()``), then measures, each store in a fresh child process so that RSS
deltas are not blurred by the generator's freed memory:

  (i)   the serialized size distribution of ``MessageState.to_bytes()`` (and of the keys);
  (ii)  memory store: RSS delta of a dict of N keys -> state bytes, as faust's ``memory://``
        store holds the table (``Store.data``: bytes -> bytes); also the extra
        ``_key_partition`` dict the memory store fills when it recovers from the changelog,
        and, for scale, the worker's derived deadline index (pending messages only, str keys)
        that exists with either store, and the expiry index it no longer needs;
  (iii) rocksdict store: N puts into ``rocksdict.Rdict`` opened with faust's own options
        (``faust.stores.rocksdb.RocksDBOptions().open``: 64 MiB write buffer x3, bloom filter,
        2 GiB LRU block cache, binary-search index), one DB per table partition (4, keys
        spread with Kafka's murmur2 partitioner as the table does), flushed and compacted in a
        temp dir; on-disk bytes per message (SST files and whole dir) and the memtable /
        block cache / table-reader memory RocksDB reports, plus RSS.

Target: <= 300 bytes per in-flight message in rocksdict.

    .venv/bin/python bench/bench_state_memory.py [--messages 1000000] [--chunk 100000] [--seed 1]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

US = 1_000_000
PARTITIONS = 4
TARGET_ROCKSDICT_BYTES = 300


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    gc.collect()
    return status_kb("VmRSS") * 1024


def pct(sorted_vals: list[int], q: float) -> int:
    return sorted_vals[min(len(sorted_vals) - 1, max(0, int(round(q / 100 * len(sorted_vals) + 0.5)) - 1))]


# ------------------------------------------------------------------------------ data file
# One flat file: N, then keys blob + offsets, values blob + offsets, deadline/stage arrays.


def save(path: Path, keys: bytearray, koff: array, vals: bytearray, voff: array, dl: array, touched: array) -> None:
    with open(path, "wb") as fh:
        for part in (keys, vals):
            fh.write(len(part).to_bytes(8, "little"))
            fh.write(part)
        for arr in (koff, voff, dl, touched):
            fh.write(len(arr).to_bytes(8, "little"))
            arr.tofile(fh)


def load(path: Path) -> tuple[bytes, array, bytes, array, array, array]:
    with open(path, "rb") as fh:
        blobs = []
        for _ in range(2):
            n = int.from_bytes(fh.read(8), "little")
            blobs.append(fh.read(n))
        arrs = []
        for code in ("Q", "Q", "q", "q"):
            n = int.from_bytes(fh.read(8), "little")
            a = array(code)
            a.fromfile(fh, n)
            arrs.append(a)
    return blobs[0], arrs[0], blobs[1], arrs[1], arrs[2], arrs[3]


def build_states(n_messages: int, chunk: int, seed: int, data_path: Path) -> dict[str, Any]:
    """Generate, fold and serialize ``n_messages`` message states; save them; return figures (i)."""
    from agents.generate import Mix, generate
    from streams.events import message_key
    from streams.lifecycle import summarize
    from streams.report import Replay
    from streams.stuck import SlaTable, deadline

    slas = SlaTable()
    rnd = random.Random(seed)
    now_us = time.time_ns() // 1000
    keys, vals = bytearray(), bytearray()
    koff, voff = array("Q", [0]), array("Q", [0])
    dl = array("q")  # pending deadline (µs) or 0
    touched = array("q")
    n_events: Counter[int] = Counter()
    records = 0
    c = 0
    t0 = time.perf_counter()
    while len(dl) < n_messages:
        recs = list(generate(Mix(messages=min(chunk, n_messages - len(dl)), seed=seed + c), now_us))
        records += len(recs)
        rp = Replay()
        rp.feed_lines(recs)
        del recs
        for (source, tenant, mid), st in rp.states.items():
            if len(dl) >= n_messages:
                break
            # touched_us is the worker's processing time of the last applied event: a little after it.
            st.touched_us = st.events[-1][0] + rnd.randrange(5 * US)
            kb = message_key(source, tenant, mid).encode()
            vb = st.to_bytes()
            keys += kb
            koff.append(len(keys))
            vals += vb
            voff.append(len(vals))
            n_events[len(st.events)] += 1
            d = deadline(summarize(source, st.events), tenant, slas)
            dl.append(d.deadline_us if d is not None else 0)
            touched.append(st.touched_us)
        c += 1
        log(f"states: {len(dl):,}/{n_messages:,} ({time.perf_counter() - t0:.0f}s)")
    save(data_path, keys, koff, vals, voff, dl, touched)
    ksz = sorted(koff[i + 1] - koff[i] for i in range(len(dl)))
    vsz = sorted(voff[i + 1] - voff[i] for i in range(len(dl)))
    return {
        "messages": len(dl), "records_generated": records, "build_s": time.perf_counter() - t0,
        "value_bytes": {"mean": len(vals) / len(dl), "p50": pct(vsz, 50), "p90": pct(vsz, 90),
                        "p99": pct(vsz, 99), "max": vsz[-1], "min": vsz[0], "total": len(vals)},
        "key_bytes": {"mean": len(keys) / len(dl), "p50": pct(ksz, 50), "p99": pct(ksz, 99), "max": ksz[-1],
                      "total": len(keys)},
        "events_per_message": {str(k): v for k, v in sorted(n_events.items())},
        "value_size_histogram": {str(12 + 9 * k): v for k, v in sorted(n_events.items())},
        "pending_deadlines": sum(1 for x in dl if x),
    }


# ------------------------------------------------------------------------------ children


def child_memory(data_path: Path) -> dict[str, Any]:
    """(ii): RSS delta of the memory store's dict, the recovery-time _key_partition dict and the
    derived DeadlineIndex pair, each for all N messages."""
    from streams.stuck import DeadlineIndex

    keys, koff, vals, voff, dl, touched = load(data_path)
    n = len(dl)
    out: dict[str, Any] = {"messages": n}
    base = rss_bytes()
    # Exactly what Store.data holds after N table sets: fresh bytes objects as keys and values.
    data: dict[bytes, bytes] = {}
    for i in range(n):
        data[keys[koff[i]:koff[i + 1]]] = vals[voff[i]:voff[i + 1]]
    after = rss_bytes()
    out["store_dict_rss_bytes"] = after - base
    out["store_dict_bytes_per_message"] = (after - base) / n
    # Python object sizes (what the RSS delta should be, give or take allocator slack).
    obj = sys.getsizeof(data) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in data.items())
    out["store_dict_getsizeof_bytes_per_message"] = obj / n
    out["store_dict_breakdown_per_message"] = {
        "dict_table": sys.getsizeof(data) / n,
        "key_objects": sum(sys.getsizeof(k) for k in data) / n,
        "value_objects": sum(sys.getsizeof(v) for v in data.values()) / n,
    }
    # After a restart the memory store rebuilds from the changelog and also fills
    # _key_partition (key -> partition) for every key.
    base = rss_bytes()
    key_partition = {k: i % PARTITIONS for i, k in enumerate(data)}
    after = rss_bytes()
    out["key_partition_bytes_per_message"] = (after - base) / n
    # Derived index the worker keeps whatever the store: the deadline index (messages at
    # queued/sent without outcome only), keyed by the decoded message key. Expiry needs no
    # index since issue 13 (agents/expiry.py sweeps the store); the expiry index it replaced
    # (an entry for every message) is measured too, for the before/after.
    del key_partition
    base = rss_bytes()
    deadlines = DeadlineIndex()
    for i, k in enumerate(data):
        if dl[i]:
            deadlines.schedule(k.decode(), dl[i], "sent")
    after = rss_bytes()
    out["derived_indexes_bytes_per_message"] = (after - base) / n
    base = rss_bytes()
    expiry = DeadlineIndex()
    retention = 7 * 86400 * US
    for i, k in enumerate(data):
        expiry.schedule(k.decode(), touched[i] + retention, "expire")
    after = rss_bytes()
    out["former_expiry_index_bytes_per_message"] = (after - base) / n
    out["pending_deadlines"] = sum(1 for x in dl if x)
    out["peak_rss_mb"] = status_kb("VmHWM") / 1024
    return out


def _dir_bytes(path: Path, suffix: str | None = None) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and (suffix is None or p.name.endswith(suffix)):
            total += p.stat().st_size
    return total


def child_rocksdict(data_path: Path, db_dir: Path) -> dict[str, Any]:
    """(iii): N puts into faust-configured Rdicts (one per partition); disk and memory figures."""
    from aiokafka.partitioner import murmur2
    from faust.stores.rocksdb import RocksDBOptions

    keys, koff, vals, voff, dl, _touched = load(data_path)
    n = len(dl)
    opts = RocksDBOptions()  # faust's defaults, as the table store builds them (no per-table options)
    out: dict[str, Any] = {"messages": n, "partitions": PARTITIONS, "faust_options": {
        "write_buffer_size": opts.write_buffer_size, "max_write_buffer_number": opts.max_write_buffer_number,
        "target_file_size_base": opts.target_file_size_base, "block_cache_size": opts.block_cache_size,
        "bloom_filter_size": opts.bloom_filter_size, "max_open_files": opts.max_open_files}}
    base = rss_bytes()
    dbs = [opts.open(db_dir / f"messages-{p}.db") for p in range(PARTITIONS)]
    out["rss_open_bytes"] = rss_bytes() - base

    def prop(name: str) -> int:
        total = 0
        for db in dbs:
            try:
                total += int(db.property_int_value(name) or 0)
            except Exception:  # noqa: BLE001 - property not supported by this build
                return -1
        return total

    t = time.perf_counter()
    for i in range(n):
        k = keys[koff[i]:koff[i + 1]]
        dbs[(murmur2(k) & 0x7FFFFFFF) % PARTITIONS].put(k, vals[voff[i]:voff[i + 1]])
    out["put_s"] = time.perf_counter() - t
    out["puts_per_s"] = n / out["put_s"]
    out["after_puts"] = {"rss_delta_bytes": rss_bytes() - base, "memtables_bytes": prop("rocksdb.cur-size-all-mem-tables"),
                         "dir_bytes": _dir_bytes(db_dir), "sst_bytes": _dir_bytes(db_dir, ".sst"),
                         "wal_bytes": _dir_bytes(db_dir, ".log")}
    t = time.perf_counter()
    for db in dbs:
        db.flush()
        db.compact_range(None, None)
    out["flush_compact_s"] = time.perf_counter() - t
    time.sleep(0.5)
    sst = _dir_bytes(db_dir, ".sst")
    total = _dir_bytes(db_dir)
    out["after_compaction"] = {
        "sst_bytes": sst, "dir_bytes": total, "sst_bytes_per_message": sst / n, "dir_bytes_per_message": total / n,
        "memtables_bytes": prop("rocksdb.cur-size-all-mem-tables"),
        "table_readers_mem_bytes": prop("rocksdb.estimate-table-readers-mem"),
        "block_cache_usage_bytes": prop("rocksdb.block-cache-usage"),
        "live_data_bytes": prop("rocksdb.estimate-live-data-size"),
        "num_keys_estimate": prop("rocksdb.estimate-num-keys"),
        "rss_delta_bytes": rss_bytes() - base,
    }
    # Reads warm the block cache (data blocks + index/filter): a random 10 % of the keys, then all.
    rnd = random.Random(7)
    for label, idx in (("read_10pct", rnd.sample(range(n), n // 10)), ("read_all", range(n))):
        t = time.perf_counter()
        miss = 0
        for i in idx:
            k = keys[koff[i]:koff[i + 1]]
            if dbs[(murmur2(k) & 0x7FFFFFFF) % PARTITIONS].get(k) is None:
                miss += 1
        dt = time.perf_counter() - t
        out[label] = {"gets_per_s": len(idx) / dt, "missing": miss,
                      "block_cache_usage_bytes": prop("rocksdb.block-cache-usage"),
                      "table_readers_mem_bytes": prop("rocksdb.estimate-table-readers-mem"),
                      "rss_delta_bytes": rss_bytes() - base}
    try:
        opts_file = sorted(db_dir.glob("messages-0.db/OPTIONS-*"))[-1].read_text()
        out["compression"] = sorted({ln.split("=", 1)[1].strip() for ln in opts_file.splitlines()
                                     if ln.strip().startswith("compression=")})
    except (IndexError, OSError):
        out["compression"] = None
    for db in dbs:
        db.close()
    out["peak_rss_mb"] = status_kb("VmHWM") / 1024
    return out


def run_child(mode: str, *argv: str, timeout_s: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, *argv], capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--chunk", type=int, default=100_000, help="messages generated per seed (memory bound)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900.0, help="hard limit per child process, seconds")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        mode, *rest = args.child
        res = child_memory(Path(rest[0])) if mode == "memory" else child_rocksdict(Path(rest[0]), Path(rest[1]))
        print(json.dumps(res))
        return 0

    stamp = time.strftime("%Y%m%dT%H%M%S")
    out_dir = ROOT / ".bench"
    out_dir.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fwbench-state-"))
    result: dict[str, Any] = {"bench": "state_memory", "timestamp": stamp, "args": vars(args) | {"child": None}}
    try:
        data_path = tmp / "states.bin"
        log(f"building {args.messages:,} message states ...")
        result["i_serialized"] = build_states(args.messages, args.chunk, args.seed, data_path)
        log("(ii) memory store ...")
        result["ii_memory_store"] = run_child("memory", str(data_path), timeout_s=args.timeout)
        log("(iii) rocksdict store ...")
        (tmp / "db").mkdir()
        result["iii_rocksdict"] = run_child("rocksdict", str(data_path), str(tmp / "db"), timeout_s=args.timeout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        out_path = out_dir / f"state-memory-{stamp}.json"
        out_path.write_text(json.dumps(result, indent=2))
    print_summary(result, out_path)
    return 0


def print_summary(r: dict[str, Any], out_path: Path) -> None:
    i, m, rd = r["i_serialized"], r["ii_memory_store"], r["iii_rocksdict"]
    n = i["messages"]
    v, k = i["value_bytes"], i["key_bytes"]
    ac = rd["after_compaction"]
    per_msg_disk = ac["sst_bytes_per_message"]
    lines = [
        "",
        f"funnelwatch state bytes per in-flight message  ({n:,} messages, {i['records_generated']:,} generated records)",
        f"  (i) MessageState.to_bytes(): mean {v['mean']:.1f} B  p50 {v['p50']}  p90 {v['p90']}  p99 {v['p99']}  "
        f"max {v['max']}  (12 + 9 x events; events/message {i['events_per_message']})",
        f"      key (source|tenant|message_id): mean {k['mean']:.1f} B  p99 {k['p99']}  max {k['max']}",
        f"  (ii) memory:// store dict (bytes -> bytes): {m['store_dict_bytes_per_message']:.0f} B/message RSS "
        f"({m['store_dict_rss_bytes'] / 2**20:,.0f} MiB; getsizeof {m['store_dict_getsizeof_bytes_per_message']:.0f} B: "
        + ", ".join(f"{a} {b:.0f}" for a, b in m["store_dict_breakdown_per_message"].items()) + ")",
        f"       + after a restart, _key_partition: {m['key_partition_bytes_per_message']:.0f} B/message",
        f"       derived index (deadline DeadlineIndex of pending messages only, any store): "
        f"{m['derived_indexes_bytes_per_message']:.0f} B/message ({m['pending_deadlines']:,} pending deadlines); "
        f"the former expiry index (every message): {m['former_expiry_index_bytes_per_message']:.0f} B/message",
        f"  (iii) rocksdict (faust options, {rd['partitions']} partition DBs, compression {rd['compression']}): "
        f"{rd['puts_per_s']:,.0f} puts/s",
        f"       on disk after flush + compaction: {per_msg_disk:.1f} B/message SST "
        f"({ac['sst_bytes'] / 2**20:,.1f} MiB), {ac['dir_bytes_per_message']:.1f} B/message whole dir "
        f"-> target <= {TARGET_ROCKSDICT_BYTES} B: {'PASS' if ac['dir_bytes_per_message'] <= TARGET_ROCKSDICT_BYTES else 'FAIL'}",
        f"       before flush: memtables {rd['after_puts']['memtables_bytes'] / 2**20:,.1f} MiB, WAL "
        f"{rd['after_puts']['wal_bytes'] / 2**20:,.1f} MiB, RSS +{rd['after_puts']['rss_delta_bytes'] / 2**20:,.1f} MiB",
        f"       after compaction: table readers (index+filter) {ac['table_readers_mem_bytes'] / 2**20:,.2f} MiB, "
        f"block cache {ac['block_cache_usage_bytes'] / 2**20:,.2f} MiB, RSS +{ac['rss_delta_bytes'] / 2**20:,.1f} MiB",
        f"       after reading every key: block cache {rd['read_all']['block_cache_usage_bytes'] / 2**20:,.1f} MiB "
        f"(cap {rd['faust_options']['block_cache_size'] / 2**30:.0f} GiB per DB), "
        f"RSS +{rd['read_all']['rss_delta_bytes'] / 2**20:,.1f} MiB = {rd['read_all']['rss_delta_bytes'] / n:.0f} B/message; "
        f"{rd['read_all']['gets_per_s']:,.0f} gets/s",
        f"  figures: {out_path.relative_to(ROOT)}",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
