"""From an xprof.py trace: which threads the XLA ops of one step ran on, and whether
the given ops overlapped others (i.e. would be hidden on idle cores).

    python experiments/xprof_overlap.py /tmp/xprof_speed/keras_io bitcast_concatenate_fusion
"""
import collections, glob, os, sys
import numpy as np
from tensorflow.tsl.profiler.protobuf import xplane_pb2

logdir, targets = sys.argv[1], sys.argv[2:]
path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
space = xplane_pb2.XSpace()
space.ParseFromString(open(path, "rb").read())
skip = ("Iterator", "Executor", "Eager", "TFE_", "Kernel", "CpuExecutable", "BlockUntil",
        "ThunkExecutor", "multi_step", "Prefetch", "__inference", "Function", "ParallelLoop")
events = []
for plane in space.planes:
    md = plane.event_metadata
    for line in plane.lines:
        for ev in line.events:
            name = md[ev.metadata_id].name
            if "::" in name or name.startswith(skip) or " " in name:
                continue
            start = line.timestamp_ns * 1000 + ev.offset_ps
            events.append((start, start + ev.duration_ps, line.id, name))
threads = collections.Counter(e[2] for e in events)
print("threads running XLA ops:", dict(threads.most_common(6)))
for target in targets:
    mine = [e for e in events if e[3] == target]
    fractions = []
    for s, t, tid, _ in mine:
        overl = sum(max(0, min(t, t2) - max(s, s2)) for s2, t2, tid2, n2 in events
                    if tid2 != tid and n2 != target)
        fractions.append(min(1.0, overl / max(t - s, 1)))
    print(f"{target}: {len(mine)} runs, median {np.median([(t - s) / 1e6 for s, t, _, _ in mine]):.1f} us,"
          f" median fraction overlapped by ops on other threads {np.median(fractions):.2f}")
