"""Container health check: exit 0 when the server answers 200 on its readiness route.

The serving image has no curl; this uses the standard library only. It asks the port from
``NORMSERVE_PORT`` (the port the server binds) on the loopback interface, so it works for any
port the container is configured with. Exit 1 with one line on stderr otherwise.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

__all__ = ["READY_PATH", "check"]

READY_PATH = "/v2/health/ready"


def check(port: int, timeout: float = 2.0) -> str | None:
    """None when ready, else the reason."""
    url = f"http://127.0.0.1:{port}{READY_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, urllib.error.URLError) as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main() -> int:
    port = int(os.environ.get("NORMSERVE_PORT", "8000"))
    reason = check(port)
    if reason is not None:
        print(f"not ready: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
