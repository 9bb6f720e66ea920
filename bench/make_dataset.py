#!/usr/bin/env python3
# Vendored copy of shared/bench/make_dataset.py, so `make run` works from a bare clone.
# bench/pool_ingest.py prefers ../shared/bench/make_dataset.py when it exists.
"""Deterministic backup-benchmark dataset generator (stdlib only).

Create a dataset:
    python3 make_dataset.py DIR --size-mb 2048 --seed 1
    python3 make_dataset.py DIR --profile small --files 20000 --seed 2

Mutate an existing dataset in place (realistic change pattern, ~PCT % of bytes):
    python3 make_dataset.py DIR --mutate 2 --seed 3

Profiles
  mixed (default), bytes split roughly:
    10 % small files  (1-50 KB, log-uniform; source-tree-like text, ~5 % small binaries)
    30 % medium files (1-20 MB; logs, JSON, CSV, page-structured "db" files half random)
    60 % large files  (100-300 MB; half the bytes random/incompressible "media",
                       half compressible "vm image" = text / zero / random 64 KiB segments)
  small: only small files (use --files K for an exact count).

Determinism: every file's content comes from random.Random(f"{seed}:{kind}:{index}")
(string seeds are hashed with SHA-512, independent of PYTHONHASHSEED), so the same
arguments always give byte-identical trees. Mutation is deterministic given the seed
and the current tree (files are listed in sorted order).

A one-line JSON summary is printed on stdout. Nothing is written outside DIR.
"""
import argparse
import json
import math
import os
import random
import sys
import time

KB = 1024
MB = 1024 * 1024

# --------------------------------------------------------------------------- pools
_WORDS = ("request response handler worker session token user account config value "
          "buffer stream chunk index cache store backup restore snapshot repo pack blob "
          "tree node error warning timeout retry connect close open read write flush "
          "commit rollback query result status client server upload download object key "
          "bucket region policy secret hash digest cipher nonce tag length offset size "
          "count limit total start end begin finish update delete insert select create").split()
_LEVELS = ["INFO"] * 12 + ["DEBUG"] * 6 + ["WARN"] * 2 + ["ERROR"]
_PATHS = ["/api/v1/items", "/api/v1/users", "/api/v2/snapshots", "/healthz", "/metrics",
          "/api/v1/upload", "/api/v1/objects", "/login", "/static/app.js", "/api/v2/packs"]


class Pools:
    """Line pools built once per seed; files are random selections from them."""

    def __init__(self, seed):
        r = random.Random(f"{seed}:pools")
        w = _WORDS
        idents = [r.choice(w) + "_" + r.choice(w) for _ in range(400)] + \
                 [r.choice(w).capitalize() + r.choice(w).capitalize() for _ in range(200)]
        code = []
        for _ in range(20000):
            ind = "    " * r.choice((0, 1, 1, 2, 2, 2, 3, 3, 4))
            a, b, c = r.choice(idents), r.choice(idents), r.choice(idents)
            t = r.randrange(12)
            if t == 0:
                s = f"def {a}({b}, {c}=None):"
            elif t == 1:
                s = f"if {a} is not None and {b} > {r.randrange(1000)}:"
            elif t == 2:
                s = f"for {a} in {b}.{c}():"
            elif t == 3:
                s = f"return {a}({b}, {c})"
            elif t == 4:
                s = f"# {' '.join(r.choice(w) for _ in range(r.randrange(3, 12)))}"
            elif t == 5:
                s = f"self.{a} = {b}.get('{c}', {r.randrange(100)})"
            elif t == 6:
                s = f"raise ValueError(f\"{a} {c}: {{{b}!r}}\")"
            elif t == 7:
                s = f"import {a}" if r.random() < .5 else f"from {a} import {b}, {c}"
            elif t == 8:
                s = f"class {a.title().replace('_', '')}({b.title().replace('_', '')}):"
            elif t == 9:
                s = ""
            else:
                s = f"{a} = {b}[{r.randrange(64)}:{r.randrange(64, 4096)}] + {c}"
            code.append(ind + s + "\n")
        self.code = code

        logs = []
        for _ in range(50000):
            lvl = r.choice(_LEVELS)
            comp = r.choice(idents)
            t = r.randrange(5)
            if t == 0:
                msg = (f"{r.choice(('GET', 'GET', 'POST', 'PUT', 'DELETE'))} {r.choice(_PATHS)}"
                       f"/{r.randrange(10**6)} status={r.choice((200, 200, 200, 201, 204, 404, 500))}"
                       f" dur={r.randrange(1, 2500)}ms bytes={r.randrange(10**7)}")
            elif t == 1:
                msg = f"{r.choice(w)} {r.choice(w)} id={r.getrandbits(64):016x} user={r.randrange(50000)}"
            elif t == 2:
                msg = f"{comp}: {' '.join(r.choice(w) for _ in range(r.randrange(4, 14)))}"
            elif t == 3:
                msg = f"retry {r.randrange(1, 6)}/5 after {r.choice(w)} (err={r.choice(w)}_{r.randrange(99)})"
            else:
                msg = f"stats {comp} n={r.randrange(10**5)} p50={r.random():.4f} p99={r.random() * 10:.4f}"
            logs.append(f"{lvl:5s} [{r.choice(w)}-{r.randrange(16)}] {msg}\n")
        self.logs = logs

        js = []
        for _ in range(20000):
            rec = {"id": r.randrange(10**9), "name": f"{r.choice(w)} {r.choice(w)}",
                   "email": f"{r.choice(w)}.{r.randrange(9999)}@example.com",
                   "active": r.random() < .8, "score": round(r.random() * 1000, 3),
                   "tags": [r.choice(w) for _ in range(r.randrange(0, 5))],
                   "created": f"2024-{r.randrange(1, 13):02d}-{r.randrange(1, 29):02d}T"
                              f"{r.randrange(24):02d}:{r.randrange(60):02d}:{r.randrange(60):02d}Z"}
            js.append("  " + json.dumps(rec, separators=(", ", ": ")) + ",\n")
        self.json = js

        self.csv = [",".join([str(r.randrange(10**6)), f"{r.random() * 1e4:.2f}", r.choice(w),
                              str(r.randrange(2)), f"{r.gauss(0, 1):.6f}",
                              f"{r.randrange(1, 13):02d}/{r.randrange(1, 29):02d}/2024"]) + "\n"
                    for _ in range(20000)]


def _avg(pool):
    return max(1, sum(len(x) for x in pool[:2000]) // len(pool[:2000]))


def text_bytes(rng, pool, n):
    """~n bytes (exactly n) of newline-separated lines drawn from pool."""
    if n <= 0:
        return b""
    avg = _avg(pool)
    parts, total = [], 0
    while total < n:
        k = min(20000, (n - total) // avg + 8)
        s = "".join(rng.choices(pool, k=k)).encode()
        parts.append(s)
        total += len(s)
    return b"".join(parts)[:n]


def log_bytes(rng, pool, n, t0_ms):
    """Timestamped log lines; returns (bytes, next_timestamp_ms)."""
    parts, total, t = [], 0, t0_ms
    avg = _avg(pool) + 25
    while total < n:
        k = min(20000, (n - total) // avg + 8)
        lines = rng.choices(pool, k=k)
        steps = rng.choices((1, 2, 3, 5, 8, 13, 40, 250), k=k)
        out = []
        for ln, st in zip(lines, steps):
            t += st
            out.append(f"2024-05-{1 + t // 86400000 % 28:02d}T{t // 3600000 % 24:02d}:"
                       f"{t // 60000 % 60:02d}:{t // 1000 % 60:02d}.{t % 1000:03d}Z {ln}")
        s = "".join(out).encode()
        parts.append(s)
        total += len(s)
    return b"".join(parts)[:n], t


def write_file(path, chunks_iter):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = 0
    with open(path, "wb") as f:
        for c in chunks_iter:
            f.write(c)
            n += len(c)
    return n


def gen_pieces(n, piece=4 * MB):
    """Yield piece sizes summing to n."""
    while n > 0:
        k = min(piece, n)
        yield k
        n -= k


# --------------------------------------------------------------------------- file kinds
def small_file(pools, seed, i, root):
    rng = random.Random(f"{seed}:small:{i}")
    size = int(math.exp(rng.uniform(math.log(1 * KB), math.log(50 * KB))))
    d1, d2 = i // 2000, (i // 50) % 40
    kind = rng.random()
    if kind < 0.05:
        name, data = f"asset_{i:06d}.png", b"\x89PNG\r\n\x1a\n" + rng.randbytes(max(0, size - 8))
    elif kind < 0.12:
        name = f"conf_{i:06d}.json"
        data = b"[\n" + text_bytes(rng, pools.json, size)
    elif kind < 0.20:
        name = f"README_{i:06d}.md"
        data = text_bytes(rng, pools.logs, size)
    else:
        ext = rng.choice((".py", ".py", ".py", ".c", ".h", ".js", ".go"))
        name = f"mod_{i:06d}{ext}"
        data = text_bytes(rng, pools.code, size)
    path = os.path.join(root, "src", f"pkg{d1:03d}", f"sub{d2:02d}", name)
    return write_file(path, [data])


def medium_file(pools, seed, i, root, size):
    rng = random.Random(f"{seed}:medium:{i}")
    k = i % 10
    if k < 4:
        path = os.path.join(root, "data", "logs", f"app-{i:04d}.log")
        t = [rng.randrange(10**9)]

        def it():
            for n in gen_pieces(size):
                b, t[0] = log_bytes(rng, pools.logs, n, t[0])
                yield b
        return write_file(path, it())
    if k < 6:
        path = os.path.join(root, "data", "json", f"export-{i:04d}.json")
        return write_file(path, (text_bytes(rng, pools.json, n) for n in gen_pieces(size)))
    if k < 8:
        path = os.path.join(root, "data", "csv", f"table-{i:04d}.csv")
        return write_file(path, (text_bytes(rng, pools.csv, n) for n in gen_pieces(size)))
    # page-structured binary: 8 KiB pages, half random, rest sparse/structured
    path = os.path.join(root, "data", "db", f"store-{i:04d}.db")

    def pages():
        for n in gen_pieces(size, 1 * MB):
            out = []
            for _ in range(n // (8 * KB)):
                r = rng.random()
                if r < 0.5:
                    out.append(rng.randbytes(8 * KB))
                elif r < 0.75:
                    hdr = rng.randbytes(64)
                    out.append(hdr + text_bytes(rng, pools.csv, 2 * KB) + bytes(8 * KB - 64 - 2 * KB))
                else:
                    out.append(text_bytes(rng, pools.json, 8 * KB))
            rem = n - len(out) * 8 * KB
            if rem:
                out.append(rng.randbytes(rem))
            yield b"".join(out)
    return write_file(path, pages())


def large_file(pools, seed, i, root, size, compressible):
    rng = random.Random(f"{seed}:large:{i}")
    if not compressible:
        path = os.path.join(root, "media", f"video-{i:03d}.mkv")
        return write_file(path, (rng.randbytes(n) for n in gen_pieces(size)))
    path = os.path.join(root, "images", f"vm-{i:03d}.img")
    seg = 64 * KB

    def segs():
        for n in gen_pieces(size, 4 * MB):
            out, got = [], 0
            while got < n:
                m = min(seg, n - got)
                r = rng.random()
                if r < 0.20:
                    out.append(bytes(m))
                elif r < 0.45:
                    out.append(rng.randbytes(m))
                elif r < 0.75:
                    out.append(text_bytes(rng, pools.logs, m))
                elif r < 0.90:
                    out.append(text_bytes(rng, pools.code, m))
                else:
                    out.append(text_bytes(rng, pools.json, m))
                got += m
            yield b"".join(out)
    return write_file(path, segs())


# --------------------------------------------------------------------------- create
def create(root, size_mb, seed, profile, nfiles):
    pools = Pools(seed)
    total_target = size_mb * MB
    stats = {"small_files": 0, "small_bytes": 0, "medium_files": 0, "medium_bytes": 0,
             "large_files": 0, "large_bytes": 0}
    if profile == "small":
        small_budget, medium_budget, large_budget = total_target, 0, 0
    else:
        small_budget = total_target * 10 // 100
        medium_budget = total_target * 30 // 100
        large_budget = total_target - small_budget - medium_budget

    i = 0
    while (nfiles and i < nfiles) or (not nfiles and stats["small_bytes"] < small_budget):
        stats["small_bytes"] += small_file(pools, seed, i, root)
        stats["small_files"] += 1
        i += 1

    plan = random.Random(f"{seed}:plan")
    i = 0
    while stats["medium_bytes"] < medium_budget:
        size = min(plan.randrange(1 * MB, 20 * MB), max(MB, medium_budget - stats["medium_bytes"]))
        stats["medium_bytes"] += medium_file(pools, seed, i, root, size)
        stats["medium_files"] += 1
        i += 1

    # large files come in pairs (random + compressible) so bytes are split ~half/half
    i = 0
    while stats["large_bytes"] < large_budget:
        left = large_budget - stats["large_bytes"]
        size = plan.randrange(100 * MB, 300 * MB)
        size = min(size, max(MB, left // 2))
        for comp in (False, True):
            stats["large_bytes"] += large_file(pools, seed, i, root, size, comp)
            stats["large_files"] += 1
            i += 1
    stats["total_bytes"] = stats["small_bytes"] + stats["medium_bytes"] + stats["large_bytes"]
    stats["total_files"] = stats["small_files"] + stats["medium_files"] + stats["large_files"]
    return stats


# --------------------------------------------------------------------------- mutate
def list_files(root):
    out = []
    for dp, dns, fns in os.walk(root):
        dns.sort()
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            out.append((os.path.relpath(p, root), os.path.getsize(p)))
    out.sort()
    return out


def mutate(root, pct, seed):
    pools = Pools(seed)
    rng = random.Random(f"{seed}:mutate")
    files = list_files(root)
    total = sum(s for _, s in files)
    budget = int(total * pct / 100.0)
    st = {"before_bytes": total, "before_files": len(files), "budget_bytes": budget,
          "appended": 0, "overwritten": 0, "inserted": 0, "small_edited": 0,
          "new_bytes": 0, "deleted_bytes": 0, "files_appended": 0, "files_overwritten": 0,
          "files_shifted": 0, "files_edited": 0, "files_new": 0, "files_deleted": 0}
    logs = [f for f in files if f[0].endswith(".log")]
    large = [f for f in files if f[1] >= 64 * MB]
    shiftable = [f for f in files if f[0].endswith((".json", ".csv")) and f[1] >= MB]
    small = [f for f in files if f[1] < 64 * KB and f[0].endswith((".py", ".c", ".h", ".js", ".go", ".md"))]

    # 1) 35 %: append to log files (a third of the logs, or a few small files if no logs)
    b = budget * 35 // 100
    targets = rng.sample(logs, max(1, len(logs) // 3)) if logs else []
    for rel, _ in targets:
        n = b // len(targets)
        data, _ = log_bytes(rng, pools.logs, n, 2 * 10**9 + rng.randrange(10**6))
        with open(os.path.join(root, rel), "ab") as f:
            f.write(data)
        st["appended"] += n
        st["files_appended"] += 1

    # 2) 25 %: overwrite 64 KiB - 1 MiB regions in the middle of large files (in place)
    b = budget * 25 // 100
    if large:
        done = 0
        while done < b:
            rel, size = rng.choice(large)
            n = min(rng.randrange(64 * KB, MB), b - done)
            off = rng.randrange(size // 10, max(size // 10 + 1, size - n))
            data = rng.randbytes(n) if "video" in rel else text_bytes(rng, pools.logs, n)
            with open(os.path.join(root, rel), "r+b") as f:
                f.seek(off)
                f.write(data)
            done += n
            st["files_overwritten"] += 1
        st["overwritten"] = done
    else:
        budget_extra = b  # fold into small edits
        st["overwritten"] = 0

    # 3) 5 %: insert bytes at the start of some files (shifts all content after it)
    b = max(1, budget * 5 // 100)
    cands = rng.sample(shiftable, min(3, len(shiftable))) if shiftable else []
    comp_large = [f for f in large if f[0].endswith(".img")]
    if comp_large:
        cands.append(rng.choice(comp_large))
    if not cands:
        cands = rng.sample(small, min(20, len(small)))
    for rel, _ in cands:
        n = max(1, min(b // len(cands), rng.randrange(17, 4 * KB)))
        p = os.path.join(root, rel)
        hdr = text_bytes(rng, pools.json, n)
        tmp = p + ".tmp~"
        with open(p, "rb") as src, open(tmp, "wb") as dst:
            dst.write(hdr)
            while True:
                c = src.read(4 * MB)
                if not c:
                    break
                dst.write(c)
        os.replace(tmp, p)
        st["inserted"] += n
        st["files_shifted"] += 1

    # 4) 10 % (+ unused overwrite budget): edit small source files (change/insert lines mid-file)
    b = budget * 10 // 100 + (budget * 25 // 100 if not large else 0)
    done = 0
    pool_small = list(small)
    rng.shuffle(pool_small)
    for rel, size in pool_small:
        if done >= b:
            break
        p = os.path.join(root, rel)
        with open(p, "rb") as f:
            lines = f.read().split(b"\n")
        at = rng.randrange(len(lines))
        new = text_bytes(rng, pools.code, rng.randrange(40, 800)).split(b"\n")
        lines[at:at + rng.randrange(0, 4)] = new
        with open(p, "wb") as f:
            f.write(b"\n".join(lines))
        done += size
        st["files_edited"] += 1
    st["small_edited"] = done

    # 5) 15 %: new files (one medium-ish log + new source files)
    b = budget * 15 // 100
    half = b // 2
    if half >= 16 * KB:
        data, _ = log_bytes(rng, pools.logs, half, 3 * 10**9)
        st["new_bytes"] += write_file(os.path.join(root, "data", "logs", f"new-{seed}.log"), [data])
        st["files_new"] += 1
    j = 0
    while st["new_bytes"] < b:
        n = int(math.exp(rng.uniform(math.log(KB), math.log(50 * KB))))
        st["new_bytes"] += write_file(os.path.join(root, "src", f"new{seed}", f"added_{j:05d}.py"),
                                      [text_bytes(rng, pools.code, n)])
        st["files_new"] += 1
        j += 1

    # 6) 10 %: delete files (small files; untouched ones only)
    b = budget * 10 // 100
    touched = {r for r, _ in targets} | {r for r, _ in cands}
    dels = [f for f in files if f[1] < 64 * KB and f[0] not in touched]
    rng.shuffle(dels)
    for rel, size in dels:
        if st["deleted_bytes"] >= b:
            break
        p = os.path.join(root, rel)
        if os.path.exists(p):
            os.remove(p)
            st["deleted_bytes"] += size
            st["files_deleted"] += 1
    after = list_files(root)
    st["after_bytes"] = sum(s for _, s in after)
    st["after_files"] = len(after)
    st["changed_bytes"] = (st["appended"] + st["overwritten"] + st["inserted"] + st["small_edited"]
                           + st["new_bytes"] + st["deleted_bytes"])
    return st


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", choices=("mixed", "small"), default="mixed")
    ap.add_argument("--files", type=int, default=0, help="small profile: exact number of files")
    ap.add_argument("--mutate", type=float, default=None, metavar="PCT",
                    help="mutate existing DIR in place by ~PCT %% of its bytes")
    a = ap.parse_args()
    t = time.time()
    if a.mutate is not None:
        if not os.path.isdir(a.dir):
            sys.exit(f"{a.dir}: not a directory")
        st = mutate(a.dir, a.mutate, a.seed)
        st["mode"] = "mutate"
        st["pct"] = a.mutate
    else:
        if os.path.exists(a.dir) and os.listdir(a.dir):
            sys.exit(f"{a.dir}: exists and is not empty")
        os.makedirs(a.dir, exist_ok=True)
        st = create(a.dir, a.size_mb, a.seed, a.profile, a.files)
        st["mode"] = "create"
        st["profile"] = a.profile
    st["seed"] = a.seed
    st["seconds"] = round(time.time() - t, 2)
    print(json.dumps(st))


if __name__ == "__main__":
    main()
