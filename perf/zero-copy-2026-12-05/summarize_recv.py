#!/usr/bin/env python3
"""Pools the rounds of several `muxado bench --out DIR` runs per binary (the DIR name ends in
-before or -after) and prints, per case and system: Gbit/s, the paired ratio to tcp-uring of the
same round, and Gbit per CPU-second (throughput per unit of CPU actually obtained, which the shared
machine's load disturbs less), each as median (min-max) over all rounds, with the load seen.

usage: summarize_recv.py DIR... (each DIR holds a results.json)"""
import json
import statistics
import sys
from collections import defaultdict


def fmt(xs, p=2):
    if not xs:
        return "-"
    return f"{statistics.median(xs):.{p}f} ({min(xs):.{p}f}-{max(xs):.{p}f})"


pooled = defaultdict(lambda: defaultdict(list))
loads = defaultdict(list)
for d in sys.argv[1:]:
    which = d.rstrip("/").rsplit("-", 1)[-1]
    res = json.load(open(f"{d}/results.json"))
    loads[which].append(res["meta"]["load_before"].split()[0])
    for row in res["rows"]:
        case = f"{row['scenario']}/{row['streams']}"
        key = (case, row["system"], which)
        for s in row["samples"]:
            pooled[key]["gbit"].append(s["gbit_s"] or 0.0)
            pooled[key]["ops"].append(s["ops_s"] or 0.0)
            if s.get("p50_us"):
                pooled[key]["p50"].append(s["p50_us"])
            if s["cpu_s"]:
                pooled[key]["eff"].append((s["gbit_s"] or 0.0) / s["cpu_s"])
        if row.get("x_tcp_uring"):
            pooled[key]["x"].append(row["x_tcp_uring"]["median"])

print("load (1-min) before each run:", dict(loads))
print("| case | system | binary | rounds | Gbit/s | ops/s | p50 us | x tcp-uring (per run) | Gbit per cpu-s |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for key in sorted(pooled):
    v = pooled[key]
    case, system, which = key
    print(
        f"| {case} | {system} | {which} | {len(v['gbit'])} | {fmt(v['gbit'])} | {fmt(v['ops'], 0)} "
        f"| {fmt(v['p50'], 0)} | {fmt(v['x'])} | {fmt(v['eff'])} |"
    )
