"""What the kernel's timer tick costs whatever runs on a CPU: `python3 ticks.py TRACE [NAME=PID]...`.

TRACE is `perf script -F tid,time,event,trace` of `perf record -e sched:sched_switch -e
irq_vectors:local_timer_entry -C CPU` taken while a c=1 load ping-pongs between processes on that
CPU. A run slice is the time between two context switches; the script compares the slices a timer
tick landed in with the others, per thread, and prints JSON: ticks per second, and for the busiest
threads their slice count, median slice without a tick, median slice with one, and the difference.
"""
import json
import os
import re
import statistics
import sys

names = {}
for arg in sys.argv[2:]:
    name, _, pid = arg.partition("=")
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            names[tid] = name
    except OSError:
        pass
switch = re.compile(r"sched:sched_switch: prev_comm=(.+?) prev_pid=(\d+) ")
ticks, first, last = 0, None, None
start, ticked = None, False
slices = {}
for line in open(sys.argv[1]):
    head, _, _ = line.partition(": ")
    try:
        t = float(head.split()[-1].rstrip(":"))
    except (ValueError, IndexError):
        continue
    first = t if first is None else first
    last = t
    if "local_timer_entry" in line:
        ticks += 1
        ticked = True
        continue
    m = switch.search(line)
    if not m:
        continue
    if start is not None:
        thread = names.get(m.group(2), f"{m.group(1)}[{m.group(2)}]")
        slices.setdefault(thread, ([], []))[1 if ticked else 0].append((t - start) * 1e6)
    start, ticked = t, False

threads = []
for thread, (plain, with_tick) in sorted(slices.items(), key=lambda kv: -len(kv[1][0]))[:4]:
    if len(plain) < 100 or len(with_tick) < 5:
        continue
    plain_us, tick_us = statistics.median(plain), statistics.median(with_tick)
    threads.append({"thread": thread, "slices": len(plain) + len(with_tick), "ticked": len(with_tick),
                    "median_us": round(plain_us, 1), "median_ticked_us": round(tick_us, 1),
                    "added_us": round(tick_us - plain_us, 1)})
span = (last - first) if first is not None and last is not None else 0
print(json.dumps({"ticks_per_second": round(ticks / span) if span else 0, "threads": threads}))
