# Side-by-side medians from arnorm-bench logs named <set>_<lib>_<round>.log: one line per (set, path, H, TP, T),
# the libs' figures by round; flags any row with #wrong != 0.
import collections, glob, os, re, sys
d = sys.argv[1]
rows = collections.OrderedDict(); libs = []
for f in sorted(glob.glob(os.path.join(d, '*.log'))):
    m = re.match(r'(\w+?)_(\w+)_(\d)\.log$', os.path.basename(f))
    if not m: continue
    st, lib, rnd = m.groups()
    if lib not in libs: libs.append(lib)
    for line in open(f):
        p = line.split()
        if line.startswith('#') or len(p) < 12 or not p[0].isdigit(): continue
        key = (st, p[4], p[1], p[3], int(p[0]))
        rows.setdefault(key, {}).setdefault(lib, []).append(p[6])
        if p[9] != '0': print('WRONG', f, line.strip())
print('set path H TP T | ' + ' | '.join(libs))
for k in sorted(rows, key=lambda k: (k[0], k[1], int(k[2]), int(k[3]), k[4])):
    print(' '.join(map(str, k)), '|', ' | '.join('/'.join(rows[k].get(l, ['-'])) for l in libs))
