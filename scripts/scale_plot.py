#!/usr/bin/env python3
"""Draws the scaling curve (docs/scale.svg) from `cargo bench --bench scale` summary lines.

Usage: python3 scripts/scale_plot.py FILE... > docs/scale.svg
Each FILE holds a bench run's output; its `scale clients=…` line is read. No dependencies:
the SVG is written by hand (two panels: CPU per process, and the true error).
"""

import math
import sys

CPU = [("server_cpu", "ts-server", "#1f77b4"), ("broker_cpu", "RabbitMQ", "#d62728"),
       ("redis_cpu", "Redis", "#2ca02c"), ("swarm_cpu", "swarm (all clients)", "#9467bd")]
ERR = [("median_us", "median", "#1f77b4"), ("p99_us", "p99", "#d62728")]


def runs(paths):
    out = []
    for p in paths:
        for line in open(p, encoding="utf-8"):
            if line.startswith("scale "):
                kv = dict(f.split("=", 1) for f in line.split()[1:])
                out.append({k: float(v) for k, v in kv.items() if k != "master_ok" and v != "none"})
    return sorted(out, key=lambda r: r["clients"])


def panel(x0, title, ylabel, rows, series, ymax, log):
    w, h, left, top = 380, 260, 60, 40
    xs = [r["clients"] for r in rows]
    lx0, lx1 = math.log10(min(xs)), math.log10(max(xs))
    lx1 = lx1 if lx1 > lx0 else lx0 + 1

    def px(c):
        return x0 + left + (math.log10(c) - lx0) / (lx1 - lx0) * w

    def py(v):
        if log:
            lo, hi = 1.0, math.log10(ymax)
            f = (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo)
        else:
            f = v / ymax
        return top + h - f * h

    s = [f'<text x="{x0 + left + w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
         f'<rect x="{x0 + left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#888"/>',
         f'<text x="{x0 + 14}" y="{top + h / 2}" font-size="12" transform="rotate(-90 {x0 + 14} '
         f'{top + h / 2})" text-anchor="middle">{ylabel}</text>',
         f'<text x="{x0 + left + w / 2}" y="{top + h + 36}" text-anchor="middle" '
         f'font-size="12">clients (log scale)</text>']
    for c in xs:
        s.append(f'<text x="{px(c):.1f}" y="{top + h + 16}" text-anchor="middle" '
                 f'font-size="11">{int(c):,}</text>')
    ticks = [10 ** k for k in range(1, int(math.log10(ymax)) + 1)] if log else \
        [k * 0.2 for k in range(int(round(ymax / 0.2)) + 1)]
    for t in ticks:
        label = f"{int(t):,}" if log else f"{t:.1f}"
        s.append(f'<text x="{x0 + left - 6}" y="{py(t) + 4:.1f}" text-anchor="end" '
                 f'font-size="11">{label}</text>')
        s.append(f'<line x1="{x0 + left}" x2="{x0 + left + w}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
                 f'stroke="#eee"/>')
    for i, (key, name, color) in enumerate(series):
        pts = [(px(r["clients"]), py(r[key])) for r in rows if key in r]
        s.append('<polyline fill="none" stroke-width="2" stroke="%s" points="%s"/>'
                 % (color, " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)))
        for a, b in pts:
            s.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>')
        s.append(f'<text x="{x0 + left + 8}" y="{top + 16 + 15 * i}" font-size="12" '
                 f'fill="{color}">{name}</text>')
    return s


def main():
    rows = runs(sys.argv[1:])
    if not rows:
        sys.exit("no `scale clients=…` line in the files given")
    cpu_max = max(0.4, math.ceil(max(r[k] for r in rows for k, _, _ in CPU if k in r) * 5) / 5)
    err_max = 10 ** math.ceil(math.log10(max(r[k] for r in rows for k, _, _ in ERR if k in r)))
    body = panel(0, "CPU (cores of this 2-core machine)", "cores", rows, CPU, cpu_max, False)
    body += panel(470, "true error to the master (steady window)", "µs (log scale)", rows, ERR,
                  err_max, True)
    print('<svg xmlns="http://www.w3.org/2000/svg" width="940" height="350" '
          'font-family="sans-serif">')
    print('<rect width="100%" height="100%" fill="white"/>')
    print("\n".join(body))
    print("</svg>")


if __name__ == "__main__":
    main()
