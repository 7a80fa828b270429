"""Runs the independent SCIM compliance suite (scim2-tester's check_server) against a crm-iam
SCIM endpoint: python3 tests/scim_compliance.py <base URL> with SCIM_TOKEN in the environment.

Prints one line per check that did not pass, then a JSON summary line
{"passed": N, "failed": N, "skipped": N, "statuses": {...}}; exits 1 when a check failed.
ERROR and CRITICAL are failures (RFC MUST violations); DEVIATION (a SHOULD not followed) is
reported and counted apart.
"""

import collections
import json
import os
import sys

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import check_server
from scim2_tester.utils import Status


def main() -> int:
    base = sys.argv[1].rstrip("/") + "/"
    token = os.environ["SCIM_TOKEN"]
    http = httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    client = SyncSCIMClient(http)
    results = check_server(client)
    statuses = collections.Counter(r.status.name for r in results)
    failed = [r for r in results if r.status in (Status.ERROR, Status.CRITICAL)]
    for r in results:
        if r.status not in (Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE, Status.SKIPPED):
            print(f"{r.status.name} {r.title}: {r.reason}")
    passed = sum(statuses[s] for s in ("SUCCESS", "COMPLIANT", "ACCEPTABLE"))
    summary = {
        "passed": passed,
        "failed": len(failed),
        "deviations": statuses["DEVIATION"],
        "skipped": statuses["SKIPPED"],
        "statuses": dict(statuses),
    }
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
