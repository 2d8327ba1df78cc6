"""The script the comparison suite starts each server with:
``python -m benchmarks.serve {floor,original,ours} PORT``.

The original and ours are handed the same predictor class through the same Python entry,
``ParaAttentionServer(predictor, host, port, num_devices, log_level).run()``; the original
is imported from the temporary package that ``benchmarks.original`` writes (on PYTHONPATH).
"""

from __future__ import annotations

import logging
import sys

from .same_predictor import SIZES, AllReduceOnce

HOST = "127.0.0.1"
NUM_DEVICES = 2
# Neither server logs a line per job at WARNING. The original's Flask development server
# still logs every request (werkzeug sets its own level): that is the original as shipped.
LOG_LEVEL = logging.WARNING


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "floor":
        from .floor import run

        run(HOST, port, SIZES)
        return
    if kind == "original":
        import torch.multiprocessing as mp
        from para_attn_original.server import ParaAttentionServer

        # As the original's own CLI does before it builds the server: its queues are made
        # before the server switches to spawn, which Python refuses (a SemLock created in a
        # fork context cannot go to a spawned process).
        mp.set_start_method("spawn", force=True)
    elif kind == "ours":
        from para_attn_server import ParaAttentionServer
    else:
        raise SystemExit(f"unknown server {kind!r}: floor, original or ours")
    ParaAttentionServer(AllReduceOnce(SIZES), HOST, port, NUM_DEVICES, LOG_LEVEL).run()


# Rank processes are spawned, and they import this module again: only run as a script.
if __name__ == "__main__":
    main()
