"""Running a benchmark's subprocess and measuring it: wall time, the peak memory of its whole process
tree (sampled every 50 ms: RSS and PSS), and the CPU seconds of the tree.

    run = run_measured([sys.executable, "-m", "gptcli", ...], capture=True)
    run.seconds, run.peak_rss, run.peak_pss, run.cpu_seconds, run.out
"""

import resource
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil


@dataclass
class Measured:
    out: str  # its stdout (captured) or ""
    seconds: float  # wall time, start to exit
    peak_rss: int  # bytes, the largest sum over the tree seen
    peak_pss: int
    cpu_seconds: float  # user + system of the process and every descendant it waited for


def run_measured(argv: list[str], capture: bool = False, quiet: bool = False) -> Measured:
    """Run argv to its end and measure it. capture: keep its stdout; quiet: keep its stderr too (it is
    shown if the command fails, which ends the benchmark with SystemExit)."""
    cpu = cpu_seconds_of_children()
    start = time.perf_counter()
    pipe = subprocess.PIPE
    proc = subprocess.Popen(
        argv, stdout=pipe if capture else subprocess.DEVNULL, stderr=pipe if quiet else None, text=True
    )
    stop, peak = threading.Event(), {"rss": 0, "pss": 0}
    sampler = threading.Thread(target=sample_tree_memory, args=(proc.pid, stop, peak), daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:4])} failed (exit code {proc.returncode})" + (f":\n{err}" if err else "")
        )
    return Measured(out or "", seconds, peak["rss"], peak["pss"], cpu_seconds_of_children() - cpu)


def sample_tree_memory(pid: int, stop: threading.Event, peak: dict) -> None:
    """Keep peak["rss"] / peak["pss"] = the largest sums seen over process `pid` and its descendants.

    RSS counts a page shared by several processes (forked workers) in each of them; PSS divides it
    among them, so the PSS sum is the tree's real footprint. Both are reported."""
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.wait(0.05):
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = pss = 0
        for p in procs:
            try:
                info = p.memory_full_info()
                rss, pss = rss + info.rss, pss + info.pss
            except psutil.Error:
                pass
        peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)


def cpu_seconds_of_children() -> float:
    """User + system CPU of every finished descendant (each process's waited-for children included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
