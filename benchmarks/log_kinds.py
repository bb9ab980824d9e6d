"""Which kind of log keeps a child's output fastest? Drains one `head -c N /dev/zero` pipe (1 MiB,
blocking reads) into each kind in alternating rounds and prints medians: MB/s, CPU seconds of
this process, and its RSS afterwards.

    python -m benchmarks.log_kinds [KINDS] [BYTES]
    python -m benchmarks.log_kinds reused,file,file+pop,shm,memfd,anon+pop,pwrite,pwrite-shm,splice 4294967296

Kinds: reused (readv into one buffer, the ceiling), file / shm / memfd / anon (readv into a
shared mapping of a 32 MiB segment file on /tmp, a file on /dev/shm, a memfd, anonymous memory
with MADV_HUGEPAGE), `+pop` (MADV_POPULATE_WRITE 4 MiB ahead), pwrite / pwrite-shm (readv into
one buffer, then pwrite to a file), splice (pipe to file).
"""
from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SEG = 32 << 20
CHUNK = 1 << 20
MADV_POPULATE_WRITE = 23


def _source(total: int) -> tuple[subprocess.Popen[bytes], int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, CHUNK)
    proc = subprocess.Popen(["head", "-c", str(total), "/dev/zero"], stdout=w)
    os.close(w)
    return proc, r


def _new_segment(kind: str, directory: str, idx: int) -> mmap.mmap:
    if kind.startswith("anon"):
        seg = mmap.mmap(-1, SEG, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        seg.madvise(mmap.MADV_HUGEPAGE)
        return seg
    fd = os.memfd_create("seg") if kind.startswith("memfd") else \
        os.open(f"{directory}/seg-{idx}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, SEG)
        return mmap.mmap(fd, SEG)
    finally:
        os.close(fd)


def run(kind: str, total: int) -> tuple[float, float, int]:
    proc, r = _source(total)
    directory = tempfile.mkdtemp(dir="/dev/shm" if "shm" in kind else "/tmp")
    buf = memoryview(bytearray(CHUNK))
    out_fd = -1
    segments: list[mmap.mmap] = []
    view: memoryview | None = None
    pos = SEG
    populated = 0
    got = 0
    start, cpu = time.perf_counter(), os.times()
    try:
        while True:
            if kind in ("reused",):
                n = os.readv(r, [buf])
            elif kind.startswith(("pwrite", "splice")):
                if out_fd < 0:
                    out_fd = os.open(f"{directory}/log", os.O_WRONLY | os.O_CREAT, 0o600)
                if kind.startswith("splice"):
                    n = os.splice(r, out_fd, CHUNK, offset_dst=got)
                else:
                    n = os.readv(r, [buf])
                    if n:
                        os.pwrite(out_fd, buf[:n], got)
            else:
                if pos == SEG:
                    if view is not None:
                        view.release()
                    segments.append(_new_segment(kind, directory, len(segments)))
                    view = memoryview(segments[-1])
                    pos = populated = 0
                if kind.endswith("+pop") and pos + CHUNK > populated and populated < SEG:
                    end = min(SEG, populated + 4 * CHUNK)
                    segments[-1].madvise(MADV_POPULATE_WRITE, populated, end - populated)
                    populated = end
                assert view is not None
                n = os.readv(r, [view[pos:min(SEG, pos + CHUNK)]])
                pos += n
            if n == 0:
                break
            got += n
        seconds = time.perf_counter() - start
        used = os.times()
        rss = int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) // 1024
    finally:
        proc.wait()
        os.close(r)
        if out_fd >= 0:
            os.close(out_fd)
        if view is not None:
            view.release()
        for seg in segments:
            seg.close()
        shutil.rmtree(directory)
    assert got == total, got
    return got / seconds / 1e6, (used.user - cpu.user) + (used.system - cpu.system), rss


def main() -> None:
    kinds = (sys.argv[1] if len(sys.argv) > 1 else "reused,file,file+pop,shm,memfd,anon+pop,pwrite,pwrite-shm").split(",")
    total = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 30
    results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in kinds}
    for _ in range(3):
        for kind in kinds:
            results[kind].append(run(kind, total))
    print("| kind | MB/s (median of 3) | CPU s | RSS after, MiB |\n| --- | --- | --- | --- |")
    for kind, runs in results.items():
        print(f"| {kind} | {statistics.median(x[0] for x in runs):.0f} | "
              f"{statistics.median(x[1] for x in runs):.2f} | {runs[-1][2]} |")


if __name__ == "__main__":
    main()
