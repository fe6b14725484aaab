#!/usr/bin/env python3
"""Side-by-side medians of arnorm-bench logs from an A/B run: one line per (set, path, mode,
hidden, world, tokens), one column per library or setting, its figures by round. Flags every
row whose #wrong is not 0.

    python3 scripts/ab_table.py DIR [PREFIX]

Logs are named SET_LIB_ROUND.log (SET: no '_'; LIB: anything; ROUND: digits), e.g.
abh4096_default_1.log, abh4096_lib-old_2.log, abh4096_ARNORM_PDL=0_1.log (scripts/gpu_check.sh's
ab stage); with PREFIX only files starting with it. Prints nothing for a directory without such
logs.
"""
import glob
import os
import re
import sys


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    folder, prefix = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    rows, libs, wrong = {}, [], []
    for path in sorted(glob.glob(os.path.join(folder, prefix + "*.log"))):
        m = re.match(r"([^_]+)_(.+)_(\d+)\.log$", os.path.basename(path))
        if not m:
            continue
        bench_set, lib, _ = m.groups()
        if lib not in libs:
            libs.append(lib)
        with open(path) as f:
            for line in f:
                p = line.split()
                if line.startswith("#") or len(p) < 12 or not p[0].isdigit():
                    continue
                # tokens hidden dtype world path mode time algbw busbw #wrong base speedup ...
                key = (bench_set, p[4], p[5], int(p[1]), int(p[3]), int(p[0]))
                rows.setdefault(key, {}).setdefault(lib, []).append(p[6])
                if p[9] not in ("0", "-"):
                    wrong.append("%s: %s" % (os.path.basename(path), line.strip()))
    if not rows:
        return 0
    libs.sort(key=lambda lib: lib != "default")  # this build first, then the others as found
    print("set path mode H TP T | " + " | ".join(libs))
    for key in sorted(rows):
        print(" ".join(map(str, key)), "|",
              " | ".join("/".join(rows[key].get(lib, ["-"])) for lib in libs))
    for w in wrong:
        print("WRONG", w)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
