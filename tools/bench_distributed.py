"""Part 10 of the benchmarks: the heavy sensitivity stages on several processes (torchrun), and
the one-process path before and after the change that split them.

    .venv/bin/python tools/bench_distributed.py [--quick]   (or tools/bench_all.py --part distributed)

1. `edgempq sensitivity --method clado` (pairs included; 128 samples) and `--method hawq`
   (defaults) on the trained zoo:mnist_mobilenet with --data mnist, one process against two
   (`torchrun --standalone --nproc_per_node=2`), both with OMP_NUM_THREADS=1 (torchrun's default
   for each rank, so the comparison is the split alone), interleaved (1, 2, 1, 2, ...), medians;
   besides, one process at torch's default thread count, to see whether two processes beat
   plain intra-op threading. The files two processes write are compared byte for byte with one
   process's.
2. Single process: `measured` (32 samples), `clado` (32 samples) and `hawq` with the code of the
   commit before the distributed change (a git worktree of BEFORE) against the code of HEAD
   (another worktree, so that edits in progress in the checkout do not enter the timing), run as
   `python -m edgempq` with PYTHONPATH on each tree, with OMP_NUM_THREADS=1 and at the default
   thread count, interleaved (old, new, old, new, ...), medians.

Wall time of each command as a subprocess, start-up included (what a user waits for); CPU time
of the command and its children (getrusage). Results: bench_results/all/distributed.json.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchkit  # noqa: E402
from benchkit import RESULTS, log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "mnist_mobilenet"
DATA = "mnist"
PROCS = 2
REPEATS = 3
# the distributed change landed in 82284e5 (the split) and acb8225 (is_main's fix): the commit before
BEFORE = "82284e5^"
SPLIT = {  # method: (its parameters, whether the default-thread run goes in every round or only the first)
    # 128 samples (256 by default: ~3 min a run on one thread here) to keep the part within 40 minutes
    "clado": (("samples=128",), False),
    "hawq": ((), True),  # seconds a run: every round
}
QUICK_SPLIT = {"clado": (("samples=32",), True), "hawq": (("probes=12",), True)}
# 32 samples (256 by default): the change is in how the runs are dealt out and gathered, a cost per run
# and not per sample, so few samples show it the most; and the part stays within 40 minutes
BEFORE_AFTER = {"measured": ("samples=32",), "clado": ("samples=32",), "hawq": ()}
THREADS = (1, None)  # OMP_NUM_THREADS=1, then torch's default
QUIET = 0.1  # other processes' cores busy (median) under which a run counts as alone on the machine
QUICK_BEFORE_AFTER = {"measured": ("samples=32",), "clado": ("samples=32",), "hawq": ("probes=12",)}
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID")


def environment(threads: int | None, pythonpath: Path | None = None) -> dict[str, str]:
    """This process's environment without torchrun's variables, with OMP_NUM_THREADS=`threads`
    (None: unset, torch's default) and PYTHONPATH=`pythonpath` (None: unset, the installed package)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV and k not in ("OMP_NUM_THREADS", "PYTHONPATH")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def sensitivity_args(method: str, weights: str, params: tuple[str, ...], out: Path) -> list[str]:
    args = ["sensitivity", "--method", method, "--model", f"zoo:{MODEL}", "--weights", weights, "--data", DATA,
            "-o", str(out)]
    for p in params:
        args += ["--param", p]
    return args


def busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (every process), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_once(argv: list[str], env: dict[str, str], cwd: Path, out: Path) -> dict:
    """Run `argv` to its end: wall and CPU seconds (the command and every child it reaped), the
    1-minute load average when it started, how many cores other processes kept busy meanwhile
    (the machine's busy time less the command's, over the wall time), and the bytes it wrote."""
    load = os.getloadavg()[0]
    before, busy = resource.getrusage(resource.RUSAGE_CHILDREN), busy_seconds()
    t = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=3600, check=False)
    wall = time.perf_counter() - t
    after, busy_after = resource.getrusage(resource.RUSAGE_CHILDREN), busy_seconds()
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    others = None if busy is None or busy_after is None else max(0.0, (busy_after - busy - cpu) / wall)
    return {"wall_s": wall, "cpu_s": cpu, "load": load, "others_cores": others, "output": out.read_bytes()}


def default_threads() -> int:
    """torch's intra-op thread count without OMP_NUM_THREADS, in a fresh process."""
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                       env=environment(None), capture_output=True, text=True, check=True)
    return int(r.stdout.strip())


def summary(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    return {"runs": len(runs), "median_s": statistics.median(walls), "wall_s": walls,
            "cpu_s": [r["cpu_s"] for r in runs], "load": [r["load"] for r in runs],
            "others_cores": [r["others_cores"] for r in runs]}


# ---------------------------------------------------------------- the code measured

def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def imported_from(tree: Path) -> str:
    """The edgempq that a command imports with PYTHONPATH=`tree` (checked to be the tree's)."""
    r = subprocess.run([sys.executable, "-c", "import edgempq; print(edgempq.__file__)"], env=environment(None, tree),
                       cwd=tree, capture_output=True, text=True, check=True)
    path = r.stdout.strip()
    if not Path(path).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"PYTHONPATH={tree} imports edgempq from {path}, not from the worktree")
    return path


@contextlib.contextmanager
def worktrees(work: Path) -> Iterator[dict]:
    """Git worktrees of BEFORE ("old") and HEAD ("new") under `work`, removed after: what each
    command imports (PYTHONPATH on the tree), so that edits in progress in the checkout stay out."""
    commits = {"old": git("rev-parse", BEFORE), "new": git("rev-parse", "HEAD")}
    trees = {k: work / f"tree-{k}" for k in commits}
    try:
        for k, c in commits.items():
            git("worktree", "add", "--detach", str(trees[k]), c)
        yield {"before": BEFORE, "commits": commits, "trees": trees,
               "subjects": {k: git("log", "-1", "--format=%s", c)[:120] for k, c in commits.items()},
               "imported": {k: imported_from(t) for k, t in trees.items()},
               "checkout_changes": git("status", "--short", "--", "edgempq").splitlines()}
    finally:
        for t in trees.values():
            if t.exists():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(t)], check=False,
                               capture_output=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False, capture_output=True)


# ---------------------------------------------------------------- 1. one process against two

def bench_split(method: str, spec: tuple[tuple[str, ...], bool], repeats: int, weights: str, work: Path,
                tree: Path | None) -> dict:
    """`method` with its parameters `spec[0]`, 1 process against PROCS (one thread each),
    interleaved, and one process at the default thread count (every round if `spec[1]`, else
    the first only); the edgempq of `tree` (None: the installed one), through the venv's
    `edgempq` script as the README runs it."""
    params, every_round = spec
    configs = {"1 process": ([str(BIN / "edgempq")], 1),
               f"{PROCS} processes": ([str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={PROCS}",
                                       str(BIN / "edgempq")], 1),
               "1 process, default threads": ([str(BIN / "edgempq")], None)}
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(repeats):
        for label, (head, threads) in configs.items():
            if threads is None and r and not every_round:
                continue
            out = work / f"{method}-{label.replace(' ', '_').replace(',', '')}-{r}.json"
            res = run_once(head + sensitivity_args(method, weights, params, out), environment(threads, tree), work,
                           out)
            runs[label].append(res)
            log(f"  {method}, {label}, round {r + 1}/{repeats}: {res['wall_s']:.1f} s (cpu {res['cpu_s']:.1f} s, "
                f"load {res['load']:.2f}, others {res['others_cores'] or 0:.2f} cores)")
    one, two, threaded = runs["1 process"], runs[f"{PROCS} processes"], runs["1 process, default threads"]
    reference = one[0]["output"]
    res = {"method": method, "params": list(params),
           "one": summary(one), "two": summary(two), "default_threads": summary(threaded),
           # every 1-thread file, one process or two, every round: the same bytes
           "identical": all(x["output"] == reference for x in one + two),
           "identical_default_threads": all(x["output"] == reference for x in threaded)}
    res["speedup"] = res["one"]["median_s"] / res["two"]["median_s"]
    res["speedup_vs_threads"] = res["default_threads"]["median_s"] / res["two"]["median_s"]
    log(f"{method}: 1 process {res['one']['median_s']:.1f} s, {PROCS} processes {res['two']['median_s']:.1f} s "
        f"(×{res['speedup']:.2f}), default threads {res['default_threads']['median_s']:.1f} s; "
        f"identical {res['identical']}")
    return res


# ---------------------------------------------------------------- 2. before / after, one process

def bench_before_after(methods: dict[str, tuple[str, ...]], repeats: int, weights: str, work: Path,
                       trees: dict[str, Path]) -> list[dict]:
    """Each method on one process, at one thread and at the default thread count, the old tree's
    code against the new tree's, interleaved (old, new at one thread, then old, new at the
    default)."""
    rows = []
    for method, params in methods.items():
        runs: dict[tuple, list[dict]] = {(th, k): [] for th in THREADS for k in trees}
        for r in range(repeats):
            for th, k in runs:
                f = work / f"{method}-{k}-{th}-{r}.json"
                argv = [sys.executable, "-m", "edgempq", *sensitivity_args(method, weights, params, f)]
                res = run_once(argv, environment(th, trees[k]), work, f)
                runs[(th, k)].append(res)
                log(f"  {method}, {k} code, {th or 'default'} thread(s), round {r + 1}/{repeats}: "
                    f"{res['wall_s']:.1f} s (load {res['load']:.2f}, others {res['others_cores'] or 0:.2f} cores)")
        row: dict = {"method": method, "params": list(params), "threads": {}}
        for th in THREADS:
            old, new = runs[(th, "old")], runs[(th, "new")]
            t = {"old": summary(old), "new": summary(new), "same_output": old[0]["output"] == new[0]["output"]}
            t["ratio"] = t["new"]["median_s"] / t["old"]["median_s"]
            row["threads"][str(th or "default")] = t
            log(f"{method}, {th or 'default'} thread(s): old {t['old']['median_s']:.1f} s, new "
                f"{t['new']['median_s']:.1f} s (new/old {t['ratio']:.3f})")
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the part

def run(quick: bool = False, folder: Path = RESULTS) -> dict:
    """Both comparisons on zoo:mnist_mobilenet (trained, cached); saved as distributed.json."""
    _, _, meta = benchkit.trained_model(MODEL)
    weights = meta["weights"]
    repeats = 1 if quick else REPEATS
    out = {"part": "distributed", "quick": quick, "machine": benchkit.machine(), "model": f"zoo:{MODEL}",
           "data": DATA, "procs": PROCS, "repeats": repeats, "threads_default": default_threads(), "split": []}
    with tempfile.TemporaryDirectory(prefix="bench_distributed-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        try:
            code = stack.enter_context(worktrees(work))
        except subprocess.CalledProcessError as e:  # no git, or a clone without the old commit
            code = None
            out["before_after"] = {"skipped": f"{' '.join(e.cmd)}: {(e.stderr or '').strip()[:200]}"}
            log(f"no worktrees, the installed edgempq measured and no before/after: {out['before_after']['skipped']}")
        if code:
            out["code"] = {k: v for k, v in code.items() if k != "trees"}
            log(f"old code {code['commits']['old'][:7]} from {code['imported']['old']}, new "
                f"{code['commits']['new'][:7]} from {code['imported']['new']}")
        for method, spec in (QUICK_SPLIT if quick else SPLIT).items():
            log(f"{method}: 1 process against {PROCS}")
            out["split"].append(bench_split(method, spec, repeats, weights, work,
                                            code["trees"]["new"] if code else None))
            benchkit.save("distributed", out, folder)
        if code:
            log(f"one process, the code before {BEFORE} against HEAD")
            out["before_after"] = {"methods": bench_before_after(QUICK_BEFORE_AFTER if quick else BEFORE_AFTER,
                                                                 repeats, weights, work, code["trees"])}
    out["load_end"] = os.getloadavg()[0]
    benchkit.save("distributed", out, folder)
    return out


def _s(v: float) -> str:
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.2f} min"  # noqa: PLR2004


def _runs(s: dict) -> str:
    return f"{_s(s['median_s'])} ({s['runs']})" if s["runs"] > 1 else _s(s["median_s"])


def _params(r: dict) -> str:
    return ", ".join(r["params"]) or "defaults"


def _spread(walls: list[float]) -> str:
    return f"{_s(min(walls))}–{_s(max(walls))}" if len(walls) > 1 else _s(walls[0])


def cpu_bound(r: dict, procs: int) -> float:
    """The speed-up the split allows when every rank has a core to itself: one process's CPU
    seconds over the CPU seconds of one rank of `procs` (medians)."""
    return statistics.median(r["one"]["cpu_s"]) / (statistics.median(r["two"]["cpu_s"]) / procs)


def extra_cpu(r: dict) -> float:
    """The CPU seconds the ranks together spend beyond one process (medians): repeated work and joining."""
    return statistics.median(r["two"]["cpu_s"]) - statistics.median(r["one"]["cpu_s"])


def section(result: dict, table: Callable) -> str:
    """BENCHMARKS.md's part 10: one process against two, then the one-process path before and
    after the change."""
    procs, threads, cores = result["procs"], result["threads_default"], result["machine"]["cores"]
    code = result.get("code")
    changed = len(code["checkout_changes"]) if code else 0
    files = f"{changed} file{'s' if changed > 1 else ''}"
    which = (f"The code of HEAD ({code['commits']['new'][:7]}) from a git worktree (PYTHONPATH on it), so that "
             "edits in progress in the checkout stay out"
             + (f" ({files} of edgempq/ had uncommitted changes then)" if changed else "") + ". "
             if code else "The installed edgempq (no git worktree could be made). ")
    split = result["split"]
    ba = result.get("before_after") or {}
    sides = [r[k] for r in split for k in ("one", "two", "default_threads")]
    sides += [t[k] for r in ba.get("methods", []) for t in r["threads"].values() for k in ("old", "new")]
    others = [v for side in sides for v in side.get("others_cores", []) if v is not None]
    loads = [v for side in sides for v in side["load"]]
    busy = f"{statistics.median(others):.2f} of the {cores} cores busy, median over this part's runs, at most " \
           f"{max(others):.2f}" if others else ""
    if not others:
        shared = (f"the 1-minute load average was {min(loads):.1f}–{max(loads):.1f} when the runs started, which "
                  "adds noise to every row")
    elif statistics.median(others) < QUIET:
        shared = f"in this run the machine was otherwise quiet (other processes kept {busy})"
    else:
        shared = (f"in this run other processes kept {busy}, which adds noise to every row, and the more to the "
                  "default-thread runs: with another busy process on the cores torch's threads wait on each other "
                  "whenever one of them is descheduled ("
                  + "; ".join(f"{r['method']} took {_spread(r['default_threads']['wall_s'])} at the default "
                              f"threads against {_spread(r['one']['wall_s'])} on one" for r in split) + ")")
    extra = "; ".join(f"{r['method']} {extra_cpu(r):.0f} s ({extra_cpu(r) / statistics.median(r['one']['cpu_s']):.0%} "
                      "of one process's)" for r in split)
    rows = [[r["method"], _params(r), _runs(r["one"]), _runs(r["two"]), f"×{r['speedup']:.2f}",
             _runs(r["default_threads"]), f"×{r['speedup_vs_threads']:.2f}",
             f"{statistics.median(r['one']['cpu_s']):.0f} / {statistics.median(r['two']['cpu_s']):.0f} s",
             f"×{cpu_bound(r, procs):.2f}", "yes" if r["identical"] else "**no**",
             "yes" if r["identical_default_threads"] else "no"] for r in split]
    quick = "A `--quick` smoke run: small sample counts, one run each. " if result.get("quick") else ""
    samples = "" if result.get("quick") else (
        "CLADO with 128 samples (its default is 256, about 3 minutes a run on one thread here) to keep the part "
        "within 40 minutes; HAWQ with its defaults. ")
    lines = ["## 10. On several processes (torchrun)", "",
             f"{quick}`edgempq sensitivity` on the trained `{result['model']}` with `--data {result['data']}`, as a "
             f"user runs it (a subprocess: start-up included): one process against `torchrun --standalone "
             f"--nproc_per_node={procs}`, both with `OMP_NUM_THREADS=1` (what torchrun gives each rank), so the "
             "difference is the split alone; and one process at torch's default thread count "
             f"({threads} threads) to see whether {procs} processes beat plain intra-op threading. {which}{samples}"
             f"The runs alternate (1 process, {procs} processes, default threads, then again); the median of the runs "
             "counted in brackets. CPU: the median CPU seconds of the command's processes (one process / "
             f"{procs}); on free cores: one process's CPU over a rank's share of the {procs} processes' CPU, the "
             f"speed-up the split allows when each rank has a core of its own (the {procs} processes' CPU beyond "
             "one process's is the work every rank repeats, and the cost of joining). Identical: every file of "
             f"one and of {procs} processes, every round, the same bytes; the "
             "last column compares the default-thread runs' files with them (threads may order float sums "
             "differently).", "",
             table(["method", "parameters", "1 process", f"{procs} processes", "speed-up",
                    "1 process, default threads", f"{procs} processes against threads", f"CPU 1 / {procs}",
                    "on free cores", "identical", "default threads identical"], rows), "",
             f"What limits the speed-up here: {cores} cores for {procs} processes, so any other work takes cores "
             f"from the ranks: {shared}. The processes join over gloo (TCP on the loopback), and gathering the "
             f"pieces is a collective step. And what is not split runs on every rank in full ({procs} processes "
             f"spent this much CPU beyond one process's: {extra}): start-up and imports, "
             "loading the model and the data, tracing, the float baseline, CLADO's PTQ copies of the model "
             "(one a precision, every layer), HAWQ's forward pass and gradient graph (only its Hessian-vector "
             f"probes are split, in rounds of {procs}, and they stop early). Against {threads} threads in one "
             "process the question is whether splitting whole runs beats splitting each operator over the "
             "same cores."]
    if code and ba and "skipped" not in ba:
        rows = []
        for r in ba["methods"]:
            for th, t in r["threads"].items():
                rows.append([r["method"], _params(r), "1" if th == "1" else f"default ({threads})", _runs(t["old"]),
                             _runs(t["new"]), f"{t['ratio']:.3f}", _spread(t["old"]["wall_s"]),
                             _spread(t["new"]["wall_s"]), "yes" if t["same_output"] else "no"])
        few = "" if result.get("quick") else (
            "`measured` and `clado` with 32 samples (256 by default): the change is in how the runs are dealt "
            "out and gathered, a cost per run and not per sample, so few samples show it the most, and the part "
            "stays within 40 minutes. ")
        lines += ["", "### Single-process before/after", "",
                  f"One process, the code before the distributed change (`{BEFORE}` = {code['commits']['old'][:7]}) "
                  f"against HEAD ({code['commits']['new'][:7]}), each from its own git worktree, run as "
                  "`python -m edgempq` with PYTHONPATH on the tree; with `OMP_NUM_THREADS=1` and at torch's "
                  f"default ({threads} threads), alternating (old, new at one thread, old, new at the default, then "
                  f"again); the median of the runs counted in brackets, and each side's fastest–slowest. {few}"
                  "Same output: the first old and new files the same bytes (both load the trained weights; the old "
                  "code initialised a zoo model without weights with unseeded random weights).", "",
                  table(["method", "parameters", "threads", "before", "after", "after / before", "before: range",
                         "after: range", "same output"], rows)]
    elif ba:
        lines += ["", f"Single-process before/after: not measured ({ba['skipped']})."]
    lines += ["", "Reproduce with `.venv/bin/python tools/bench_distributed.py` (or `tools/bench_all.py --part "
              "distributed`)."]
    return "\n".join(lines)


def main() -> None:
    out, results = benchkit.cli(__doc__, run, "small sample counts, one run each")
    for r in out["split"]:
        log(f"{r['method']}: ×{r['speedup']:.2f} on {PROCS} processes, identical {r['identical']}")
    log(f"wrote {results / 'distributed.json'}")

if __name__ == "__main__":
    main()
