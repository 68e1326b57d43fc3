"""Schema fuzz at scale: schemathesis from `/openapi.json` against a real `harken serve`.

The suite's tests/test_schema_fuzz.py with many more cases: positive cases (valid by the schema)
and negative ones (breaking it) for every operation, through one kept-alive session, until at
least `--cases` have been sent. Prints the cases, the server errors (5xx), the schema-valid
requests refused for their shape, the answers outside the contract, dropped connections, the
schema-invalid requests accepted, and every (operation, mode, status, code) with its count.
Exits 1 if any of the first four is not 0.

    .venv/bin/python benchmarks/schema_fuzz.py --cases 10000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, wait_healthy  # noqa: E402
from tests.test_schema_fuzz import ALIASES, Tally, fuzz  # noqa: E402


def merge(total: Tally, part: Tally) -> None:
    total.cases.update(part.cases)
    total.statuses.update(part.statuses)
    total.accepted_invalid.update(part.accepted_invalid)
    for name in ("server_errors", "refused_valid", "off_contract", "dropped"):
        getattr(total, name).extend(getattr(part, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="send at least this many")
    parser.add_argument("--examples", type=int, default=1000, help="per operation and mode")
    parser.add_argument("--model", default="whisper-tiny.en")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("HARKEN_API_KEYS", "HARKEN_HOST")}
    env["HARKEN_ALIASES"] = "{" + ", ".join(f'"{a}": "{args.model}"' for a in ALIASES) + "}"
    server = subprocess.Popen(
        [sys.executable, "-m", "harken", "serve", "--port", str(port), "--model", args.model,
         "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    try:
        try:
            wait_healthy(url, lambda: server.poll() is None, timeout=300)
        except RuntimeError as exc:
            sys.exit(str(exc))
        total = Tally()
        started = time.monotonic()
        seed = 1
        while sum(total.cases.values()) < args.cases:
            merge(total, fuzz(url, args.examples, seed_value=seed))
            print(f"  seed {seed}: {sum(total.cases.values())} cases so far", flush=True)
            seed += 1
        elapsed = time.monotonic() - started
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=60)

    cases = sum(total.cases.values())
    print(
        f"schema fuzz: {cases} cases in {elapsed:.0f} s ({dict(total.cases)}), model {args.model}"
    )
    print(f"server errors (5xx): {len(total.server_errors)}")
    print(f"schema-valid requests refused: {len(total.refused_valid)}")
    print(f"answers outside the contract: {len(total.off_contract)}")
    print(f"dropped connections: {len(total.dropped)}")
    print(f"schema-invalid requests accepted: {sum(total.accepted_invalid.values())} "
          f"{dict(total.accepted_invalid)}")  # fmt: skip
    for key, count in sorted(total.statuses.items()):
        print(f"  {count:6d}  {key}")
    for line in (total.server_errors + total.refused_valid + total.off_contract)[:20]:
        print("  FAIL", line)
    print(f"server alive at the end: {alive}")
    sys.exit(1 if total.failures() or not alive else 0)


if __name__ == "__main__":
    main()
