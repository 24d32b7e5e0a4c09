"""Preprocessing benchmark: images/s against a bare OpenCV loop, scaling with cores, peak memory.

Prints figures, asserts nothing. Usage (from the repository root):

    .venv/bin/python bench/bench_preprocess.py --folder ../shared/real-sample --size 400
    .venv/bin/python bench/bench_preprocess.py --folder ../shared/real-sample --scan
    .venv/bin/python bench/bench_preprocess.py --folder ../shared/real-sample --size 400 --breakdown

Throughput: ``preprocess_manifest`` with jobs=1 and jobs=all cores, each timed in the same run
as a bare ``cv2.imread -> cv2.resize -> cv2.imwrite`` loop over the same files (one OpenCV
thread per process in both, so "per core" means one core). Best of ``--repeat`` runs; with
jobs=1 also the ratio of CPU times (what other jobs on the machine do not change).
``--breakdown``: CPU milliseconds per image of each step of both loops, timed in place.
Memory: peak resident memory of a fresh process preprocessing N and 4N images (the files are
repeated through symbolic links in a temporary folder; the raw data is never touched).
``--scan`` runs the black-band detector over every image and prints the closest perceptual-hash
distances between distinct files: the figures quoted in the docstrings of wbc.preprocess and
wbc.images (and in bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def bare_one(args: tuple[str, str, int, int]) -> None:
    src, dst, size, quality = args
    img = cv2.imread(src, cv2.IMREAD_COLOR)
    shrink = img.shape[0] >= size and img.shape[1] >= size
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    cv2.imwrite(dst, img, [cv2.IMWRITE_JPEG_QUALITY, quality])


def bare_chunk(chunk: list[tuple[str, str, int, int]]) -> None:
    for item in chunk:
        bare_one(item)


def one_thread() -> None:
    cv2.setNumThreads(1)


def bare_loop(files: list[Path], out: Path, size: int, quality: int, jobs: int) -> tuple[float, float]:
    """Seconds (wall, CPU of this process) for the bare OpenCV loop (jobs processes, chunks like
    preprocess_manifest)."""
    out.mkdir(parents=True, exist_ok=True)
    items = [(str(f), str(out / f"{i}.jpg"), size, quality) for i, f in enumerate(files)]
    cpu = time.process_time()
    start = time.perf_counter()
    if jobs == 1:
        bare_chunk(items)
    else:
        import multiprocessing

        chunk = max(1, min(32, len(items) // (jobs * 8)))
        with ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("forkserver"), initializer=one_thread
        ) as pool:
            list(pool.map(bare_chunk, [items[i : i + chunk] for i in range(0, len(items), chunk)]))
    return time.perf_counter() - start, time.process_time() - cpu


def pipeline_run(manifest: pd.DataFrame, out: Path, size: int, quality: int, jobs: int) -> tuple[float, float]:
    """Seconds (wall, CPU of this process) for ``preprocess_manifest``."""
    from wbc.preprocess import preprocess_manifest

    cpu = time.process_time()
    start = time.perf_counter()
    processed, quarantine = preprocess_manifest(manifest, out, size, quality=quality, jobs=jobs, progress=False)
    elapsed = time.perf_counter() - start, time.process_time() - cpu
    assert processed.attrs["counts"]["skipped"] == 0  # a fresh folder: everything was processed
    return elapsed


def best_of_interleaved(repeat: int, runs: list) -> list[tuple[float, float]]:
    """Best (wall, CPU) time of each ``(fn, first_arg, *rest)`` run, alternating them ``repeat``
    times so that a change in machine load hits every contender alike."""
    times: list[list[tuple[float, float]]] = [[] for _ in runs]
    for _ in range(repeat):
        for k, (fn, first, *rest) in enumerate(runs):
            with tempfile.TemporaryDirectory(prefix="wbc-bench-") as tmp:
                times[k].append(fn(first, Path(tmp) / "out", *rest))
    return [(min(w for w, _ in t), min(c for _, c in t)) for t in times]


def start_forkserver() -> None:
    """Start the one forkserver that both loops' pools fork their workers from, with both loops'
    modules loaded: this script (OpenCV, NumPy, pandas) and what ``preprocess_manifest`` preloads
    in its own forkserver (``wbc.preprocess``, the Pillow header plugins). Neither loop's workers
    then import anything in the timed runs; a forkserver's start (about a second, once per run
    of the CLI) is timed in neither."""
    import multiprocessing
    from multiprocessing import forkserver

    from wbc import preprocess as pp

    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["__main__", "wbc.preprocess", *getattr(pp, "_PRELOAD", ())]
    )
    forkserver.ensure_running()


def throughput(files: list[Path], size: int, quality: int, repeat: int) -> None:
    cores = os.cpu_count() or 1
    manifest = pd.DataFrame({"path": [str(f) for f in files], "source": "bench", "label": "cells"})
    n = len(files)
    print(f"throughput: {n} images -> {size}x{size} JPEG q{quality}, best of {repeat}, {cores} cores")
    rows = {}
    pipeline_run(manifest.head(2), Path(tempfile.mkdtemp(prefix="wbc-bench-warm-")), size, quality, 1)  # imports
    if cores > 1:
        start_forkserver()
    for jobs in sorted({1, cores}):
        if jobs == 1:
            cv2.setNumThreads(1)
        (bare, bare_cpu), (ours, ours_cpu) = best_of_interleaved(
            repeat, [(bare_loop, files, size, quality, jobs), (pipeline_run, manifest, size, quality, jobs)]
        )
        rows[jobs] = (n / bare, n / ours)
        # jobs=1: also the CPU time (the work done, whatever else ran on the machine); with workers
        # the main process's CPU time does not count theirs.
        cpu = f"   CPU-time ratio {bare_cpu / ours_cpu:.2f}" if jobs == 1 else ""
        print(
            f"  jobs={jobs}: bare OpenCV {n / bare:7.1f} img/s   preprocess_manifest {n / ours:7.1f} img/s"
            f"   ratio {bare / ours:.2f}{cpu}"
        )
    if cores > 1:
        print(
            f"  speed-up {cores} cores vs 1: bare {rows[cores][0] / rows[1][0]:.2f}x, "
            f"preprocess_manifest {rows[cores][1] / rows[1][1]:.2f}x"
        )


def breakdown(files: list[Path], size: int, quality: int, repeat: int) -> None:
    """CPU milliseconds per image of each step, bare loop and ``preprocess_manifest`` alike, each
    step timed in place (one pass over the images in order, as the real loops run, so caches are
    as cold as there); per step the least of ``repeat`` passes. Then the real loops, whole."""
    import hashlib

    from wbc import images as wi
    from wbc import preprocess as pp

    clock = time.thread_time_ns  # CPU time of this thread: other jobs on the machine do not count
    cv2.setNumThreads(1)
    settings = pp._Settings(size, "stretch", quality, True, None)
    runs: dict[str, list[int]] = {}

    def step(name: str, fn, *args):
        start = clock()
        value = fn(*args)
        totals[name] = totals.get(name, 0) + clock() - start
        return value

    def decode(data: bytes):
        logging = cv2.utils.logging
        level = logging.getLogLevel()
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
        try:
            return wi.to_bgr8(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED))
        finally:
            logging.setLogLevel(level)

    def checks(data: bytes, raw: str) -> None:
        kind = wi.sniff_format(data)
        dims = wi.header_size(data, kind)
        if dims is not None:
            wi.check_pixel_limit(*dims, raw)
        if kind == "JPEG":
            wi._jpeg_is_complete(data)

    def sha256(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def phash(out: np.ndarray) -> str:
        return wi.phash_gray(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY))

    def record(task: dict, data: bytes, st, buf, width: int, height: int, fd: int) -> None:
        entry = {
            "raw": task["raw"],
            "out": task["out"],
            "key": settings.key,
            "raw_size": st.st_size,
            "raw_mtime_ns": st.st_mtime_ns,
            "out_size": len(buf),
            "sha256": "0" * 64,
            "phash": "0" * 16,
            "width": int(width),
            "height": int(height),
        }
        os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())

    for _ in range(repeat):
        totals: dict[str, int] = {}
        with tempfile.TemporaryDirectory(prefix="wbc-bench-steps-") as tmp:
            os.makedirs(f"{tmp}/bare")
            os.makedirs(f"{tmp}/images/cells")
            fd = os.open(f"{tmp}/progress.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            for i, f in enumerate(files):
                img = step("bare: imread", cv2.imread, str(f), cv2.IMREAD_COLOR)
                shrink = img.shape[0] >= size and img.shape[1] >= size
                inter = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
                img = step("bare: resize", cv2.resize, img, (size, size), None, 0, 0, inter)
                step("bare: imwrite", cv2.imwrite, f"{tmp}/bare/{i}.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
                task = {"raw": str(f), "out": f"images/cells/{i}.jpg", "out_abs": f"{tmp}/images/cells/{i}.jpg"}
                data, st = step("read raw bytes (+ stat)", wi.read_bytes, task["raw"])
                step("format, header size, truncation checks", checks, data, task["raw"])
                bgr = step("decode (imdecode, to BGR uint8)", decode, data)
                step("black band", pp.detect_black_band, bgr)
                out = step("resize", pp.resize_image, bgr, size)
                ok, buf = step("JPEG encode", cv2.imencode, ".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
                step("atomic write (temp file, rename)", pp._write_jpeg, task["out_abs"], buf.data)
                step("SHA-256 of the raw bytes", sha256, data)
                step("perceptual hash (gray + DCT)", phash, out)
                step("journal line (JSON, append)", record, task, data, st, buf, bgr.shape[1], bgr.shape[0], fd)
            os.close(fd)
        for name, value in totals.items():
            runs.setdefault(name, []).append(value)
    n = len(files)
    best = {name: min(values) / n / 1e6 for name, values in runs.items()}
    bare = sum(v for k, v in best.items() if k.startswith("bare"))
    ours = sum(v for k, v in best.items() if not k.startswith("bare"))
    print(f"per-image CPU time of each step (ms, least of {repeat} passes over {n} images):")
    for name, value in best.items():
        print(f"  {name:42s} {value:6.3f}")
    print(f"  {'sum, bare loop':42s} {bare:6.3f}")
    print(f"  {'sum, preprocess steps':42s} {ours:6.3f}   (ratio {bare / ours:.2f})")
    manifest = pd.DataFrame({"path": [str(f) for f in files], "source": "bench", "label": "cells"})
    whole: dict[str, list[float]] = {"bare loop": [], "preprocess_manifest, jobs=1": []}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="wbc-bench-") as tmp:
            whole["bare loop"].append(bare_loop(files, Path(tmp) / "bare", size, quality, 1)[1])
            whole["preprocess_manifest, jobs=1"].append(pipeline_run(manifest, Path(tmp) / "out", size, quality, 1)[1])
    cpu = {name: min(values) / n * 1e3 for name, values in whole.items()}
    print(
        f"  whole loops, CPU ms per image (least of {repeat}): bare {cpu['bare loop']:.3f}, "
        f"preprocess_manifest {cpu['preprocess_manifest, jobs=1']:.3f} "
        f"(ratio {cpu['bare loop'] / cpu['preprocess_manifest, jobs=1']:.2f})"
    )


MEMORY_CHILD = """
import json, multiprocessing, resource, sys, pandas as pd
import wbc.preprocess as pp
from wbc.preprocess import preprocess_manifest
# Fork the workers from this fresh process (no OpenCV work done yet, so safe) so that they are
# its children and RUSAGE_CHILDREN reports the largest of them.
pp._pool_context = lambda: multiprocessing.get_context("fork")
m = pd.read_csv(sys.argv[1])
preprocess_manifest(m, sys.argv[2], int(sys.argv[3]), jobs=int(sys.argv[4]), progress=False)
print(json.dumps({"self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def memory(files: list[Path], n: int, size: int) -> None:
    cores = os.cpu_count() or 1
    print("peak memory (fresh process, max resident set size; workers: the largest worker):")
    with tempfile.TemporaryDirectory(prefix="wbc-bench-mem-") as tmp:
        tmp = Path(tmp)
        for count in (n, 4 * n):
            links = tmp / f"links{count}"
            links.mkdir()
            paths = []
            for i in range(count):
                src = files[i % len(files)]
                paths.append(links / f"{i:06d}{src.suffix}")
                paths[-1].symlink_to(src)
            csv = tmp / f"m{count}.csv"
            pd.DataFrame({"path": [str(p) for p in paths], "source": "bench", "label": "cells"}).to_csv(
                csv, index=False
            )
            for jobs in sorted({1, cores}):
                out = tmp / f"out{count}-{jobs}"
                res = subprocess.run(
                    [sys.executable, "-c", MEMORY_CHILD, str(csv), str(out), str(size), str(jobs)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                mb = json.loads(res.stdout.strip().splitlines()[-1])
                extra = f", workers {mb['workers_mb']:.0f} MB" if jobs > 1 else ""
                print(f"  {count:6d} images, jobs={jobs}: main process {mb['self_mb']:.0f} MB{extra}")
                shutil.rmtree(out)


def scan(files: list[Path]) -> None:
    from wbc.fileio import file_digest
    from wbc.images import perceptual_hash, read_image
    from wbc.preprocess import detect_black_band

    flagged, loose, hashes, digests, moved = [], [], [], [], []
    for f in files:
        img = read_image(f)
        copy = cv2.imdecode(
            cv2.imencode(
                ".jpg", cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 75]
            )[1],
            cv2.IMREAD_COLOR,
        )
        moved.append(bin(int(perceptual_hash(img), 16) ^ int(perceptual_hash(copy), 16)).count("1"))
        if detect_black_band(img) is not None:
            flagged.append(f)
        if detect_black_band(img, max_inner_fraction=1.0) is not None:  # without the sharp-edge rule
            loose.append(f)
        hashes.append(int(perceptual_hash(img), 16))
        digests.append(file_digest(f))
    print(f"black band: {len(flagged)} of {len(files)} images flagged: {[str(f) for f in flagged]}")
    folders = pd.Series([f.parent.parent.name + "/" + f.parent.name for f in loose]).value_counts()
    print(f"  black edge lines without the sharp-edge rule: {len(loose)} images, by folder: {folders.to_dict()}")
    values = np.array(hashes, dtype=np.uint64)
    dist = np.bitwise_count(values[:, None] ^ values[None, :]).astype(int)
    same = np.array(digests)[:, None] == np.array(digests)[None, :]
    iu = np.triu_indices(len(files), 1)
    distinct = dist[iu][~same[iu]]
    print(
        f"phash: {len(distinct)} pairs of distinct files; smallest distances {sorted(distinct.tolist())[:5]}; "
        f"pairs <= 4 bits: {(distinct <= 4).sum()}; byte-identical pairs: {int(same[iu].sum())} "
        f"(distances {sorted(set(dist[iu][same[iu]].tolist()))})"
    )
    print(
        f"phash of each image vs its 128-px JPEG (q75) copy: distance histogram "
        f"{dict(sorted(pd.Series(moved).value_counts().items()))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get("WBC_REAL_SAMPLE")
    parser.add_argument(
        "--folder",
        type=Path,
        default=Path(default) if default else None,
        help="folder of images, searched recursively (default: $WBC_REAL_SAMPLE)",
    )
    parser.add_argument("--n", type=int, default=None, help="images for the throughput run (default: all)")
    parser.add_argument("--memory-n", type=int, default=500, help="N for the N / 4N memory run (default 500)")
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--scan", action="store_true", help="only the black-band and phash scan")
    parser.add_argument("--breakdown", action="store_true", help="only the per-image CPU time of each step, both loops")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args()
    if args.folder is None or not args.folder.is_dir():
        parser.error("give --folder (a folder of images) or set WBC_REAL_SAMPLE")
    files = image_files(args.folder)
    if args.scan:
        scan(files)
        return
    files = files[: args.n] if args.n else files
    print(f"python {sys.version.split()[0]}, OpenCV {cv2.__version__}, folder {args.folder}")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.breakdown:
        breakdown(files, args.size, args.quality, args.repeat)
    else:
        throughput(files, args.size, args.quality, args.repeat)
        if not args.no_memory:
            memory(files, args.memory_n, args.size)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
