#!/usr/bin/env python3
"""SVG plot of arnorm-bench CSV output: latency against tokens, fused (solid) and the
NCCL + norm baseline (dashed), one colour per world size. No dependencies.

    python3 scripts/plot_bench.py bench.csv out.svg [--hidden 4096] [--mode graph]

CSV columns (arnorm-bench -o): device,mode,world,tokens,hidden,dtype,path,time_us,algbw,
busbw,wrong,base_us,workspace_bytes[,host_us[,host_ratio]]
"""
import csv
import math
import sys


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        print(__doc__)
        return 2
    src, dst = args[0], args[1]
    hidden = int(args[args.index("--hidden") + 1]) if "--hidden" in args else 4096
    mode = args[args.index("--mode") + 1] if "--mode" in args else "graph"
    series = {}  # world -> {tokens: (fused, base)}
    with open(src) as f:
        for row in csv.reader(f):
            if len(row) < 12 or row[0] == "device":
                continue
            if row[1] != mode or int(row[4]) != hidden:
                continue
            world, tokens = int(row[2]), int(row[3])
            series.setdefault(world, {})[tokens] = (float(row[7]), float(row[11]))
    if not series:
        print("no rows for hidden %d mode %s" % (hidden, mode))
        return 1
    W, H, L, R, T, B = 720, 440, 70, 150, 40, 50
    toks = sorted({t for s in series.values() for t in s})
    vals = [v for s in series.values() for p in s.values() for v in p if v > 0]
    x0, x1 = math.log2(min(toks)), math.log2(max(toks))
    y0, y1 = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    X = lambda t: L + (math.log2(t) - x0) / max(x1 - x0, 1) * (W - L - R)
    Y = lambda v: T + (y1 - math.log10(v)) / max(y1 - y0, 1) * (H - T - B)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="20" font-size="14">arnorm fused vs NCCL all-reduce + norm, bf16, H=%d, %s</text>' % (L, hidden, "CUDA-graph replay" if mode == "graph" else mode)]
    for e in range(int(y0), int(y1) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if 10 ** y0 <= v <= 10 ** y1:
                out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (L, W - R, Y(v), Y(v)))
                out.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (L - 6, Y(v) + 4, v))
    for t in toks:
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#eee"/>' % (X(t), X(t), T, H - B))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (X(t), H - B + 16, t))
    out.append('<text x="%d" y="%d" text-anchor="middle">tokens</text>' % ((L + W - R) // 2, H - 12))
    out.append('<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">us per call</text>' % (H // 2, H // 2))
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    for i, world in enumerate(sorted(series)):
        c = colours[i % len(colours)]
        pts = sorted(series[world].items())
        for k, dash, label in ((0, "", "arnorm"), (1, ' stroke-dasharray="6 4"', "NCCL+norm")):
            path = " ".join("%.1f,%.1f" % (X(t), Y(p[k])) for t, p in pts if p[k] > 0)
            out.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>' % (c, dash, path))
            ly = T + 20 + (2 * i + k) * 18
            out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"%s/>' % (W - R + 10, W - R + 40, ly, ly, c, dash))
            out.append('<text x="%d" y="%d">TP%d %s</text>' % (W - R + 46, ly + 4, world, label))
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")
    print("wrote", dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
