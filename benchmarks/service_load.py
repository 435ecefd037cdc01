"""`melu serve` (1 worker) under load: an old commit's server against this tree's, alternating.

Each round starts the old commit's ``melu serve`` (its tree exported with ``git archive``
to a temporary folder, run with its own code on ``PYTHONPATH``) and this tree's (and any
``--variant``: this tree with other ``MELU_*`` settings), one after the other (who goes
first rotates between rounds), on the same bundle and port, 1 worker, 1 torch thread.
Against each: 2 s of warm-up load, then ``--clients`` keep-alive clients POST
/v1/recommendations for ``--duration`` seconds (``benchmarks/load_client.py`` in its own
process; each request a different user, 5 ratings, k = 10). Reported per run: req/s, p50
and p99 latency, errors, the server's CPU time per request (all its threads), the 1-minute
load average, and for this tree the mean group size and queue wait (``/metrics``); per
round the throughput ratio to old, and the median over rounds. Every answer under load is compared with the answer the
same server gives to that body alone (same items in the same order but for ties, scores
within 1e-5).

    python benchmarks/service_load.py --model /tmp/batching/run/model [--old 4c2c0d9] \
        [--variant one-at-a-time:MELU_BATCH_REQUESTS=1]

Target (issue 18, 2 shared cores): new >= 3x old req/s at 32 clients, p99 <= 10x p50,
0 errors, answers equal.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def service_bench() -> Any:
    """benchmarks/service.py as a module (its request maker and ``Server``)."""
    spec = importlib.util.spec_from_file_location("service_bench", HERE / "service.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def make_bodies(model: Path, count: int) -> list[dict[str, Any]]:
    """``count`` different users (benchmarks/service.py's ``make_requests``)."""
    from melu.serving import Recommender

    recommender = Recommender.from_bundle(model, onboarding=False)
    return service_bench().make_requests(recommender, count)  # type: ignore[no-any-return]


def export(ref: str, into: Path) -> Path:
    """The tree of commit ``ref`` as plain files under ``into`` (no git worktree)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    tree = into / f"melu-{sha}"
    if not (tree / "melu").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(["git", "archive", sha], cwd=ROOT, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        archive.wait()
    return tree


def one_at_a_time(port: int, bodies: list[bytes]) -> list[Any]:
    """Each body's answer from the server with nothing else in flight."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for body in bodies:
        connection.request(
            "POST", "/v1/recommendations", body=body, headers={"content-type": "application/json"}
        )
        response = connection.getresponse()
        out.append(json.loads(response.read()))
    return out


def same_answer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Scores (predicted ratings) equal position by position within 1e-5 and the same items
    in the same order, but for ties: where the items differ, ``a``'s item has the same score
    in ``b`` (a swap within a tie) or ``b``'s last score (a tie group cut at the end)."""
    x = [(i["item_id"], i["score"]) for i in a["items"]]
    y = [(i["item_id"], i["score"]) for i in b["items"]]
    if len(x) != len(y) or any(abs(s - t) > 1e-5 for (_, s), (_, t) in zip(x, y, strict=True)):
        return False
    scores = dict(y)
    return all(
        i == j or abs(scores.get(i, y[-1][1]) - s) <= 1e-5
        for (i, s), (j, _) in zip(x, y, strict=True)
    )


def load(port: int, bodies: Path, clients: int, duration: float) -> dict[str, Any]:
    """``load_client.py`` against ``port``: its figures, and each body's first answer."""
    answers = bodies.with_suffix(".answers.json")
    command = [sys.executable, str(HERE / "load_client.py"), "--port", str(port)]
    command += ["--bodies", str(bodies), "--clients", str(clients), "--duration", str(duration)]
    done = subprocess.run(
        [*command, "--answers", str(answers)], check=True, capture_output=True, text=True
    )
    result = json.loads(done.stdout)
    result["answers"] = json.loads(answers.read_text())
    return result  # type: ignore[no-any-return]


def metric_means(server: Any) -> str:
    """Mean group size and queue wait from a ``service.Server``'s ``/metrics`` (new servers only)."""
    _, text = server.get("/metrics")
    values: dict[str, float] = {}
    for line in text.decode().splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("melu_batch_") and name.endswith(("_sum", "_count")):
            values[name] = float(value)
    n = values.get("melu_batch_requests_count", 0)
    if not n:
        return ""
    size = values["melu_batch_requests_sum"] / n
    wait = (
        values["melu_batch_queue_wait_seconds_sum"] / values["melu_batch_queue_wait_seconds_count"]
    )
    return f"  group mean {size:.1f}, queue wait mean {wait * 1e3:.1f} ms"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(
    tree: Path, args: argparse.Namespace, bodies: Path, payloads: list[bytes], env: dict[str, str]
) -> dict[str, Any]:
    with service_bench().Server(args.model, args.port, tree=tree, env=env) as server:
        alone = one_at_a_time(args.port, payloads[: args.check])
        load(args.port, bodies, args.clients, 2.0)  # warm-up
        cpu = cpu_seconds(server.process.pid)
        result = load(args.port, bodies, args.clients, args.duration)
        result["cpu_ms"] = (cpu_seconds(server.process.pid) - cpu) / result["requests"] * 1e3
        result["extra"] = metric_means(server)
    answers = {int(k): json.loads(v) for k, v in result.pop("answers").items()}
    result["checked"] = sum(1 for k in answers if k < len(alone))
    result["unequal"] = sum(
        1 for k, v in answers.items() if k < len(alone) and not same_answer(v, alone[k])
    )
    result["load"] = os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--old", default="4c2c0d9", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--requests", type=int, default=500, help="different bodies")
    parser.add_argument("--check", type=int, default=200, help="bodies answered alone first")
    parser.add_argument("--port", type=int, default=8795)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for new")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="LABEL:NAME=VALUE[,NAME=VALUE]: also this tree with that environment, e.g. "
        "one-at-a-time:MELU_BATCH_REQUESTS=1",
    )
    args = parser.parse_args()
    work = Path(tempfile.gettempdir())
    sides = {"old": (export(args.old, work), {}), "new": (ROOT, _env(args.env))}
    for variant in args.variant:
        label, _, given = variant.partition(":")
        sides[label] = (ROOT, _env(given.split(",")))
    bodies = make_bodies(args.model, args.requests)
    payloads = [json.dumps(b).encode() for b in bodies]
    body_file = work / "melu-load-bodies.jsonl"
    body_file.write_text("\n".join(p.decode() for p in payloads) + "\n")
    print(
        f"melu serve, 1 worker, 1 torch thread, {args.clients} clients, {args.duration:g} s, "
        f"old {args.old} vs new {ROOT.name}, {os.cpu_count()} CPUs; "
        + "; ".join(f"{k}: {v[1] or 'defaults'}" for k, v in sides.items() if k != "old")
    )
    ratios: dict[str, list[float]] = {k: [] for k in sides if k != "old"}
    names = list(sides)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # who goes first rotates
        got = {}
        for side in order:
            tree, env = sides[side]
            got[side] = res = run_one(tree, args, body_file, payloads, env)
            print(
                f"round {r + 1} {side}: {res['rate']:6.0f} req/s  p50 {res['p50_ms']:6.1f} ms  "
                f"p99 {res['p99_ms']:6.1f} ms  (p99/p50 {res['p99_ms'] / res['p50_ms']:.1f})  "
                f"errors {res['errors']}  CPU {res['cpu_ms']:.2f} ms/req  "
                f"answers unequal {res['unequal']}/{res['checked']}  "
                f"load {res['load']:.2f}{res['extra']}",
                flush=True,
            )
        for side, kept in ratios.items():
            kept.append(got[side]["rate"] / got["old"]["rate"])
        print(
            f"round {r + 1}: " + ", ".join(f"{k}/old x{v[-1]:.2f}" for k, v in ratios.items()),
            flush=True,
        )
    for side, kept in ratios.items():
        each = ", x".join(f"{x:.2f}" for x in kept)
        print(f"median {side}/old throughput x{np.median(kept):.2f} (each x{each}; target >= 3)")


def _env(pairs: list[str]) -> dict[str, str]:
    return dict(p.split("=", 1) for p in pairs if p)


if __name__ == "__main__":
    main()
