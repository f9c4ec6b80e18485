"""The ``graphduel`` command (also ``python -m compare``).

    graphduel run --quick                      # every workload, small size, all modes and peers: a report
    graphduel cache list | prune | clear       # the kernel cache: size, entries, clearing
    graphduel run --workloads softmax mlp_train_adam --sizes small medium --out reports/mine
    graphduel report reports/cpu-quick/results.json      # re-render a report from saved results
    graphduel explain dynamic_net              # IR, assumptions, fusion groups, kernels, divergence
    graphduel gate --baseline baseline.json    # CI: exit 1 when a workload regressed
    graphduel run --quick --ray                # the cells as Ray tasks (a local cluster; --ray ADDRESS: a cluster)
    graphduel run --quick --shard 2/4 --out s2 # the 2nd of 4 deterministic shards; then:
    graphduel merge s1 s2 s3 s4 --out merged   # one report from the shards
    graphduel demo                             # train a small classifier eagerly
    graphduel run --workloads-from my_workloads.py --quick   # your own @workload/@program file
    graphduel explain my_workloads.py:my_net   # one workload of your file
    graphduel profile mlp_train_adam --mode eager compiled --out trace.json   # open in ui.perfetto.dev
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path


def _demo(args) -> int:
    """Train a small classifier eagerly and print the loss curve and accuracy."""
    from compare.demo import train_spiral_classifier
    result = train_spiral_classifier(steps=args.steps, seed=args.seed, log=print)
    print(f"final loss {result['loss']:.4f}, accuracy {result['accuracy']:.1%} "
          f"({result['steps']} Adam steps, {result['seconds']:.2f} s on cpu)")
    return 0


def _progress_bar(total: int, desc: str):
    """A tqdm bar on stderr (plain when not a terminal); returns (tick, close)."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5, disable=None if sys.stderr.isatty() else False)

    def tick(label: str) -> None:
        bar.set_postfix_str(label, refresh=False)
        bar.update(1)
    return tick, bar.close


def _config(args):
    from compare.harness import RunConfig
    from compare.modes import MODES, PEERS, default_modes
    modes = list(args.modes or default_modes(args.device))
    peers = args.peers if args.peers is not None else [p for p in PEERS if MODES[p].quick or not args.quick]
    if "none" in peers:
        peers = []
    chosen = modes + [p for p in peers if p not in modes]
    options = {"workloads": args.workloads or [], "modes": chosen, "device": args.device,
               "command": "graphduel " + " ".join(shlex.quote(a) for a in args.argv)}
    if args.sizes:
        options["sizes"] = args.sizes
    if args.repeats:
        options["repeats"] = args.repeats
    cfg = RunConfig.quick(**options) if args.quick else RunConfig(**options)
    cfg.excluded = {m: why for m, why in cfg.excluded.items() if m not in chosen and args.peers is None}
    return cfg


def _run(args) -> int:
    if args.workloads_from:
        from compare.workload_files import registered_files
        if args.ray is not None:
            raise ValueError("--workloads-from runs in this process only: Ray workers do not import your file; "
                             "drop --ray (or use --shard, which runs here)")
        with registered_files(args.workloads_from) as names:
            args.workloads = args.workloads or names  # the file's workloads, unless --workloads names some
            return _run_registered(args)
    return _run_registered(args)


def _run_registered(args) -> int:
    from compare.harness import run, steps
    from compare.machine_report import write_run_report
    cfg = _config(args)
    if args.ray is not None and args.shard:
        raise ValueError("--ray and --shard are two ways to split the matrix: choose one")
    name = args.name or f"{args.device}{'-quick' if args.quick else ''}"
    shard = _shard(args, cfg) if args.shard else None
    if shard:
        name += "-shard{index}of{count}".format(**shard[1])
    out = Path(args.out) if args.out else Path("reports") / name
    t0 = time.perf_counter()
    if args.ray is not None:
        from compare.distributed import import_ray, run_ray
        import_ray()  # a missing extra is said before anything starts
        tick, close = _progress_bar(len(cfg.cells()), "graphduel run --ray (cells)")
        try:
            df = run_ray(cfg, address=args.ray or None, out=out, progress=tick, cpus_per_cell=args.cpus_per_cell)
        finally:
            close()
    else:
        cells = shard[0] if shard else None
        tick, close = _progress_bar(steps(cfg, cells), "graphduel run" + (f" --shard {args.shard}" if shard else ""))
        try:
            df = run(cfg, tick, cells=cells)
        finally:
            close()
        if shard:
            df.attrs["meta"]["shard"] = shard[1]
    write_run_report(df, out)
    unexpected = _print_outcome(df)
    print(f"report: {out / 'report.html'} (also report.md, results.csv, results.json) "
          f"in {time.perf_counter() - t0:.0f} s")
    return 1 if args.strict and len(unexpected) else 0


def _shard(args, cfg):
    """(cells of this shard, the plan record) for ``--shard K/N``, balanced on ``--costs`` when given."""
    from compare.gate import load_any
    from compare.shard import parse_shard, shard_cells
    k, n = parse_shard(args.shard)
    measured = None
    if args.costs:
        from compare.shard import measured_costs
        measured = measured_costs(load_any(args.costs))
    return shard_cells(cfg, k, n, measured)


def _print_outcome(df):
    """The summary line, each unexpected correctness failure, and each retried or failed cell."""
    from compare.harness import correctness_failures, summary_line
    print(summary_line(df))
    unexpected = correctness_failures(df)
    unexpected = unexpected[~unexpected.expected_divergence.astype(bool)]
    for _, r in unexpected.drop_duplicates(["workload", "size", "mode"]).iterrows():
        print(f"  FAIL {r.workload}/{r['size']}/{r['mode']} {r.metric}: {r.detail}")
    for cell, info in (df.attrs.get("meta", {}).get("cells") or {}).items():
        if info.get("error"):
            print(f"  CELL ERROR {cell} ({info.get('attempts')} attempt(s)): {info['error']}")
        elif info.get("attempts", 1) > 1:
            print(f"  RETRIED {cell} (ran on {info.get('host')}) after: {info.get('retried_after')}")
    return unexpected


def _merge(args) -> int:
    from compare.machine_report import write_run_report
    from compare.shard import merge
    df = merge(args.dirs)
    out = Path(args.out)
    write_run_report(df, out)
    _print_outcome(df)
    machines = df.attrs["meta"].get("machines") or {}
    print(f"merged {len(args.dirs)} result set(s): {len(df.attrs['meta']['cells'])} cells from {len(machines)} "
          f"host(s); report: {out / 'report.html'} (also report.md, results.csv, results.json)")
    return 0


def _report(args) -> int:
    from compare.machine_report import write_run_report
    from compare.report import load_results
    df = load_results(args.results)
    src = Path(args.results)
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent)
    write_run_report(df, out)
    print(f"report: {out / 'report.html'} (also report.md)")
    return 0


def _explain(args) -> int:
    from compare.explain import explain
    from compare.workload_files import workload_spec
    with workload_spec(args.workload) as name:  # NAME, or PATH.py:NAME (the file's workloads, for this call)
        print(explain(name, size=args.size, device=args.device))
    return 0


def _profile(args) -> int:
    from compare.timeline import write_trace
    from compare.workload_files import workload_spec
    with workload_spec(args.workload) as name:
        path = write_trace(name, args.mode, args.size, args.out, device=args.device)
    print(f"trace: {path} ({', '.join(args.mode)}; one call each after warm-up): open it in "
          "https://ui.perfetto.dev or chrome://tracing")
    return 0


def _gate(args) -> int:
    from compare.gate import format_findings, gate, load_any
    base = load_any(args.baseline)
    cur = load_any(args.current) if args.current else None
    tick, close = (lambda s: None), (lambda: None)
    if cur is None:
        from compare.gate import _config_of
        from compare.harness import steps
        tick, close = _progress_bar(steps(_config_of(base)), "graphduel gate")
    try:
        passed, findings = gate(base, cur, threshold=args.threshold, alpha=args.alpha, rounds=args.rounds,
                                progress=tick)
    finally:
        close()
    print(format_findings(findings, show_all=args.all))
    print("gate: PASSED" if passed else "gate: FAILED (see the table above)")
    return 0 if passed else 1


def build_parser() -> argparse.ArgumentParser:
    from compare.modes import MODES
    from compare.workloads import SIZES
    parser = argparse.ArgumentParser(prog="graphduel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small classifier with the eager engine")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    run = sub.add_parser("run", help="run workloads in every mode and peer; write a report")
    run.add_argument("--workloads", nargs="+", metavar="NAME", help="default: all (see `graphduel list`)")
    run.add_argument("--modes", nargs="+", choices=[m for m in MODES if MODES[m].family == "ours"],
                     help="our modes (default: eager traced compiled)")
    run.add_argument("--peers", nargs="+", choices=[*[m for m in MODES if MODES[m].family == "peer"], "none"],
                     help="peers (default: all; --quick leaves out torch.compile)")
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    run.add_argument("--sizes", nargs="+", choices=SIZES, help="default: all three (--quick: small)")
    run.add_argument("--repeats", type=int, help="timed repeats per mode (default 15; --quick 5)")
    run.add_argument("--quick", action="store_true", help="small sizes, few repeats: a minute or two on a laptop")
    run.add_argument("--out", help="report directory (default reports/<device>[-quick])")
    run.add_argument("--name", help="report name under reports/ when --out is not given")
    run.add_argument("--strict", action="store_true", help="exit 1 on an unexpected correctness failure")
    run.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run each cell (workload x size, all its modes on one machine) as a Ray task on the cluster "
                          "at ADDRESS (default: start a local one); needs the dist extra")
    run.add_argument("--cpus-per-cell", type=float, default=1,
                     help="--ray: CPUs a cell's task reserves (also its OMP_NUM_THREADS); default 1")
    run.add_argument("--shard", metavar="K/N", help="run only the K-th of N deterministic, cost-balanced shards of "
                                                    "the cells (merge them with `graphduel merge`)")
    run.add_argument("--costs", metavar="RESULTS",
                     help="--shard: balance on the cell times of earlier results (default: estimated)")
    run.add_argument("--workloads-from", metavar="PATH.py", action="append", default=[],
                     help="also load the @workload/@program definitions of PATH.py (repeatable); without "
                          "--workloads, run only the file's workloads")
    run.set_defaults(run=_run)

    merge = sub.add_parser("merge", help="merge shard results (or a stopped --ray run) into one report")
    merge.add_argument("dirs", nargs="+", metavar="DIR", help="result directories of `graphduel run --shard K/N`")
    merge.add_argument("--out", required=True, help="directory to write the merged report to")
    merge.set_defaults(run=_merge)

    report = sub.add_parser("report", help="re-render report.md/html and plots from a results.json")
    report.add_argument("results", help="results.json (or the directory holding it)")
    report.add_argument("--out", help="directory to write to (default: next to RESULTS)")
    report.set_defaults(run=_report)

    explain = sub.add_parser("explain", help="show the IR, assumptions, fusion groups, kernels and divergence")
    explain.add_argument("workload", help="a workload name, or PATH.py:NAME for one defined in your file")
    explain.add_argument("--size", default="small", choices=SIZES)
    explain.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    explain.set_defaults(run=_explain)

    gate = sub.add_parser("gate", help="CI gate: compare against a committed baseline; exit 1 on regression")
    gate.add_argument("--baseline", required=True, help="results.json from `graphduel run`, or pytest-benchmark JSON")
    gate.add_argument("--current", help="results to judge (default: run the baseline's workloads now)")
    gate.add_argument("--threshold", type=float, default=0.3, help="allowed growth of a time ratio (0.3 = 30%%)")
    gate.add_argument("--alpha", type=float, default=0.01, help="Mann-Whitney significance level")
    gate.add_argument("--rounds", type=int, default=2, help="re-measurements of an unconfident regression")
    gate.add_argument("--all", action="store_true", help="list every check, not only the ones that did not pass")
    gate.set_defaults(run=_gate)

    prof = sub.add_parser("profile", help="write a Chrome trace (Perfetto) of one call: ops, IR nodes, kernels")
    prof.add_argument("workload", help="a workload name, or PATH.py:NAME for one defined in your file")
    prof.add_argument("--mode", nargs="+", default=["eager", "traced", "compiled"],
                      choices=["eager", "traced", "compiled"], help="modes to profile (default: all three, one "
                                                                        "process each in the trace)")
    prof.add_argument("--size", default="small", choices=SIZES)
    prof.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    prof.add_argument("--out", default="trace.json", help="the trace file to write (default trace.json)")
    prof.set_defaults(run=_profile)

    sub.add_parser("cache", help="the kernel cache: size and entries (list), prune to its bound, clear")
    listing = sub.add_parser("list", help="list the workloads and modes")
    listing.set_defaults(run=_list)
    return parser


def _list(args) -> int:
    from compare.modes import MODES
    from compare.workloads import REGISTRY
    for wl in REGISTRY.values():
        print(f"{wl.name:<18} {wl.kind:<8} {wl.source:<20} {(wl.__dict__.get('note') or '')[:70]}")
    print("modes: " + ", ".join(f"{m} ({spec.family})" for m, spec in MODES.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cache"]:  # its own parser, so `graphduel cache --help` reaches it
        from compiler.cache_cli import cache_command
        return cache_command(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except (KeyError, ValueError, FileNotFoundError) as e:  # user errors: one clear line, not a traceback
        return _user_error(args, e.args[0] if isinstance(e, KeyError) and e.args else e)
    except ImportError as e:
        from compare.distributed import MissingExtra
        if not isinstance(e, MissingExtra):
            raise
        return _user_error(args, e)


def _user_error(args, message) -> int:
    print(f"graphduel {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
