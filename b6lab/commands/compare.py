"""Compare runs or sweeps side by side: a results table, plots of val loss, and whether differences beat the seed spread.

Give it run folders (made by `b6lab train`), sweep folders (made by `b6lab sweep`), or folders of
runs (like runs/). Runs are grouped by each grid key (for plain runs: the config keys that differ
between them), with the mean ± std over seeds and a plain verdict for each difference.

  b6lab compare runs/pre-ln runs/post-ln
  b6lab compare runs/sweeps/norm_ablation --markdown norm_ablation.md
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("folders", nargs="+", metavar="DIR", help="run folders, sweep folders, or folders of runs")
    parser.add_argument("--out", metavar="DIR",
                        help="where results.csv and the plots go (default: the sweep's folder when comparing one "
                             "sweep, else runs/compare)")
    parser.add_argument("--markdown", metavar="FILE",
                        help="also write the table, the plots and the verdict as a markdown report")


def run(args: argparse.Namespace) -> int:
    from b6lab.sweep import folders, report

    runs, keys = folders.collect(args.folders)
    one_sweep = len(args.folders) == 1 and folders.read_sweep_record(Path(args.folders[0])) is not None
    out = Path(args.out) if args.out else Path(args.folders[0]) if one_sweep else Path("runs/compare")
    title = Path(args.folders[0]).name if one_sweep else "comparison"

    print(report.terminal_report(runs, keys, show_names=not one_sweep))
    written = report.write_results(runs, keys, out, title)
    plots = [path for path in written if path.suffix == ".png"]
    if args.markdown:
        report.write_markdown(Path(args.markdown), title, runs, keys, show_names=not one_sweep, plots=plots)
        written.append(Path(args.markdown))
    print(f"\nwrote {', '.join(str(path) for path in written)}")
    return 0
