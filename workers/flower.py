"""Start Flower bound to localhost with basic auth from Settings (RAGFLEET_FLOWER_USER/PASSWORD).

Flower shows task arguments, which include user questions: it must never listen on a public
interface or run without a password, so this wrapper refuses to start without one.
"""

from __future__ import annotations

import os
import sys

from ragfleet.settings import get_settings

NOT_CONFIGURED = 78  # EX_CONFIG: supervisord (infra/supervisor/fleet.conf) does not restart this exit


def main() -> None:
    s = get_settings()
    if s.flower_password is None:
        print("set RAGFLEET_FLOWER_PASSWORD to start Flower (basic auth is required)", file=sys.stderr)
        sys.exit(NOT_CONFIGURED)
    auth = f"{s.flower_user}:{s.flower_password.get_secret_value()}"
    os.environ["FLOWER_UNAUTHENTICATED_API"] = "false"
    port = os.environ.get("RAGFLEET_FLOWER_PORT", "5555")
    args = [
        "celery",
        "-A",
        "workers.app",
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
        f"--basic-auth={auth}",
    ]
    os.execvp(args[0], args)  # noqa: S606 - replaces this process with Flower, args are ours


if __name__ == "__main__":
    main()
