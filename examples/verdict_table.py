"""The preregistered verdicts T1-T14 of one or more confirmatory regimes, side by side, as a markdown table
recomputed from their committed report folders (gstlab.analysis.verdicts). The README's verdict tables give
this script's numbers.

Usage:
    python examples/verdict_table.py --regime "2,000 images" docs/figures/confirm student \\
                                     --regime "4,000 images" docs/figures/confirm2 paired

Each --regime takes a name, the folder prefix (PREFIX_fig2_vgg, PREFIX_fig6, PREFIX_fig5, PREFIX_fig3, each with
the runs.csv `gst report` writes and Figure 6's curvature.csv) and which benefit test its preregistration names
primary: student (each run's own window, Student t) or paired (common window, paired t over seeds).
"""

from __future__ import annotations

import argparse

from gstlab.analysis.verdicts import PAIRED, STUDENT, Regime, regime_tests, summary_line, verdict_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regime", nargs=3, action="append", required=True, metavar=("NAME", "PREFIX", "PRIMARY"),
                        help=f"PRIMARY: {STUDENT} or {PAIRED}")
    args = parser.parse_args()
    results = []
    for name, prefix, primary in args.regime:
        if primary not in (STUDENT, PAIRED):
            parser.error(f"--regime {name}: PRIMARY {primary!r}; allowed: {STUDENT}, {PAIRED}")
        regime = Regime.from_prefix(name, prefix, primary)
        try:
            results.append((regime, regime_tests(regime)))
        except ValueError as err:
            parser.exit(1, f"verdict_table: --regime {name}: {err}\n")
    try:
        print(verdict_table(results))
    except ValueError as err:
        parser.exit(1, f"verdict_table: {err}\n")
    for regime, tests in results:
        print(f"- {regime.name}: {summary_line(tests)}.")


if __name__ == "__main__":
    main()
