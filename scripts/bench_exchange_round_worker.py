#!/usr/bin/env python3
"""One worker process of bench_exchange_round.py: several agents, each an osml Transport (its own
paho loop thread) plus an agent thread that publishes to its neighbours and reads its inbox.

Protocol, one line each way: a JSON spec on stdin ({"url", "tag", "agents", "neighbours",
"payload"}); "ready" on stdout; then "go R" in and "done R T" out (T = the CLOCK_MONOTONIC time
the last of this worker's agents completed round R), or "fail R why"; "stop" in ends it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import benchlib
from osml.net.transport import BrokerSettings, Transport
from osml.wire import topics


def serve(spec: dict[str, Any]) -> None:
    ctx = benchlib.CONTEXT
    settings = BrokerSettings(url=spec["url"])
    ids: list[str] = spec["agents"]
    nbrs: dict[str, list[str]] = spec["neighbours"]
    filler = os.urandom(spec["payload"] - 8)
    transports = {
        a: Transport(
            settings,
            f"{spec['tag']}-{a}",
            subscriptions=[topics.inbox_filter(ctx, a)],
            persistent=False,
        )
        for a in ids
    }
    for tr in transports.values():
        tr.connect()

    cond = threading.Condition()
    state: dict[str, Any] = {"round": 0, "stop": False}
    results: dict[int, list[float]] = {}
    failures: list[str] = []
    finished = threading.Event()

    def agent(aid: str) -> None:
        tr, mine = transports[aid], nbrs[aid]
        done_round = 0
        while True:

            def started(last: int = done_round) -> bool:
                return bool(state["stop"]) or int(state["round"]) > last

            with cond:
                cond.wait_for(started)
                if state["stop"]:
                    return
                rnd: int = state["round"]
            payload = rnd.to_bytes(8, "little") + filler
            for nb in mine:
                tr.publish(topics.inbox(ctx, nb, aid), payload, qos=1)
            need = set(mine)
            deadline = time.monotonic() + 30.0
            while need:
                msg = tr.get(timeout=deadline - time.monotonic())
                if msg is None:
                    with cond:
                        failures.append(f"{aid} round {rnd}: missing {sorted(need)}")
                    break
                parsed = topics.parse_inbox(msg.topic)
                if parsed and int.from_bytes(msg.payload[:8], "little") == rnd:
                    need.discard(parsed[2])
            t = time.monotonic()
            done_round = rnd
            with cond:
                results.setdefault(rnd, []).append(t)
                if len(results[rnd]) == len(ids):
                    finished.set()

    threads = [threading.Thread(target=agent, args=(a,), daemon=True) for a in ids]
    for th in threads:
        th.start()
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "stop":
                break
            rnd = int(cmd[1])
            finished.clear()
            with cond:
                state["round"] = rnd
                cond.notify_all()
            while not finished.wait(0.5):
                with cond:
                    if failures and len(results.get(rnd, [])) + len(failures) >= len(ids):
                        break
            with cond:
                if failures:
                    print(f"fail {rnd} {failures[0]}", flush=True)
                    return
                print(f"done {rnd} {max(results[rnd]):.9f}", flush=True)
    finally:
        with cond:
            state["stop"] = True
            cond.notify_all()
        for th in threads:
            th.join(timeout=5)
        # paho's loop thread may log "Client is not connected" while close() stops it: noise here.
        logging.getLogger("osml.net.transport").setLevel(logging.CRITICAL)
        for tr in transports.values():
            tr.close()


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    serve(json.loads(sys.stdin.readline()))


if __name__ == "__main__":
    main()
