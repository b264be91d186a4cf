"""Compare runs or sweeps side by side: a results table, plots, and which differences are real.

Give it run folders (made by `b6lab train`), sweep folders (made by `b6lab sweep`), or folders of
runs (like runs/). Runs are grouped by the keys you choose (--by), else by the sweeps' grid keys,
else by the config keys that differ between them; a key that only changes with another (a plugin's
options with the plugin) is shown beside it. Each value gets its mean ± std over seeds and a
verdict against the reference value (the one that diverged least, then the lowest mean): best
(every other value is worse), lowest mean, worse, not distinguishable, or inconclusive, from
paired t-tests over seeds and a sign test on divergence, corrected with Holm, so that a false
"worse" among a key's values has at most a 5% chance; --family all holds that across every key
(docs/sweeps.md).

  b6lab compare runs/pre-ln runs/post-ln
  b6lab compare runs/sweeps/norm_ablation --by model.norm,schedule.warmup_steps
  b6lab compare runs/sweeps/norm_ablation --markdown norm_ablation.md
  b6lab compare runs/sweeps/a runs/sweeps/b --json > comparison.json   # writes no files
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("folders", nargs="+", metavar="DIR", help="run folders, sweep folders, or folders of runs")
    parser.add_argument("--by", metavar="KEY[,KEY]",
                        help="group by these config (or grid) keys; with two, also the table of their combinations")
    parser.add_argument("--metric", choices=("val_loss", "val_bpb"), default="val_loss",
                        help="the final value compared (default: val_loss; val_bpb: bits per byte, across tokenizers)")
    parser.add_argument("--family", choices=("key", "all"), default="key",
                        help="what the 5%% error rate covers: each key's values (default), or all keys together")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document (each key's values, differences, CIs, p-values, verdicts) "
                             "and write no files, unless --out or --markdown asks for them")
    parser.add_argument("--no-plots", action="store_true", help="write no PNGs")
    parser.add_argument("--out", metavar="DIR",
                        help="where results.csv and the plots go (default: the sweep's folder when comparing one "
                             "sweep, else runs/compare)")
    parser.add_argument("--markdown", metavar="FILE",
                        help="also write the table, the plots and the verdicts as a markdown report")


def run(args: argparse.Namespace) -> int:
    from b6lab.sweep import comparison, folders, report
    from b6lab.train.trackers import tensorboard_command

    result = comparison.build(args.folders, by=args.by, metric=args.metric, family=args.family)
    one_sweep = len(args.folders) == 1 and folders.read_sweep_record(Path(args.folders[0])) is not None
    out = Path(args.out) if args.out else Path(args.folders[0]) if one_sweep else Path("runs/compare")
    title = Path(args.folders[0]).name if one_sweep else "comparison"

    if args.json:
        print(json.dumps(comparison.document(result), indent=2))
    else:
        print(report.comparison_text(result, show_names=not one_sweep))
    # --json is for scripts reading stdout: it leaves the sweep's folder as it was unless asked.
    written = [] if args.json and not args.out else report.write_results(
        result.runs, result.keys, out, title, result.metric, plots=not args.no_plots, scaling=result.scaling)
    plots = [path for path in written if path.suffix == ".png"]
    if args.markdown:
        report.write_markdown(Path(args.markdown), title, result, show_names=not one_sweep, plots=plots)
        written.append(Path(args.markdown))
    # With --json, stdout holds the document alone.
    notes = sys.stderr if args.json else sys.stdout
    if written:
        print(f"\nwrote {', '.join(str(path) for path in written)}", file=notes)
    curves = tensorboard_command(args.folders)
    if curves:
        print(f"curves: {curves}", file=notes)
    return 0
