"""Where case a's time goes: ``python -m bench.profile [--records N] [--mapping PATH]``.

Runs the bridge exactly as case a does (``run --once``, exporter none, a JSON Lines
backlog) under py-spy (``pip install py-spy``), then ranks functions by self time (the
innermost frame of each sample) and prints a markdown table; the raw samples are kept in
``bench/out/profile-raw.txt``. ``bench/PROFILE.md`` holds the last table with remarks.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench import snapshot
from bench.processes import REPO_ROOT, bridge_command, child_env
from bench.report import code_hash, machine, tree_changed_note

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def _function(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``: lines vary within a function."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({match['file']})"


def rank(raw: str) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self samples by function, inclusive samples by function)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own, inclusive


def table(total: int, own: Counter[str], inclusive: Counter[str], top: int) -> str:
    lines = ["| # | Function (file) | Self | Inclusive |", "|---:|---|---:|---:|"]
    for i, (name, count) in enumerate(own.most_common(top), start=1):
        shown = name.replace("|", "\\|")
        lines.append(
            f"| {i} | `{shown}` | {100 * count / total:.1f}% | "
            f"{100 * inclusive[name] / total:.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument(
        "--mapping", type=Path, help="default: bench/mappings/ml-training-jsonl.yaml"
    )
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    out_dir = REPO_ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / "profile-raw.txt"
    with tempfile.TemporaryDirectory(prefix="ml-metrics-bridge-profile-") as folder:
        snapshot.take(Path(folder) / "code")
        at_start, measured_hash = machine(), code_hash()
        from bench.data import jsonl_mapping, write_backlog  # imports translator: after the copy

        mapping = args.mapping.resolve() if args.mapping else jsonl_mapping()
        backlog = Path(folder) / "backlog.jsonl"
        write_backlog(backlog, args.records)
        env = child_env({"METRICS_FILE_PATH": str(backlog), "OTEL_METRICS_EXPORTER": "none"})
        command = [
            py_spy, "record", "--format", "raw", "--rate", str(args.rate),
            "--output", str(raw_path), "--",
            *bridge_command("run", "--once", "--mapping", str(mapping)),
        ]
        # py-spy waits for its child and exits with it; nothing is left running.
        done = subprocess.run(command, env=env, cwd=folder, capture_output=True,
                              text=True, timeout=900, check=False)
    if done.returncode != 0 or not raw_path.exists():
        print(done.stdout + done.stderr, file=sys.stderr)
        return 1
    total, own, inclusive = rank(raw_path.read_text())
    print(f"{total} samples at {args.rate} Hz; {args.records:,} records; "
          f"mapping {mapping.relative_to(mapping.parents[2])}")
    print(f"code: {dict(at_start)['Commit']}; measured content hash {measured_hash}")
    note = tree_changed_note(measured_hash)
    if note:
        print(note)
    print()
    print(table(total, own, inclusive, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
