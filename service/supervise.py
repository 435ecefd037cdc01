"""``python -m service.supervise OPTIONS``: uvicorn for ``melu serve``, and with
``--workers N`` its multi-worker supervisor.

``melu serve --workers N`` checks the bundle in a child process, then replaces itself
(``exec``) with this module, so the supervisor is a fresh interpreter that imports uvicorn,
the connection protocol and the log formats only: no torch, no model (~50 MB instead of
the ~500 MB of a process that has loaded one). Each worker then builds the app from
``MELU_*`` (``service.app:create_app``) and loads its own copy of the bundle.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from service.logs import log_config


def run(app: object, **options: Any) -> None:
    """``uvicorn.run`` with the guarded protocol and melu's access log instead of uvicorn's."""
    import uvicorn

    from service.protocol import GuardedHttpToolsProtocol

    uvicorn.run(
        app,  # type: ignore[arg-type]
        http=GuardedHttpToolsProtocol,
        access_log=False,  # the app writes one line per request (melu.access)
        **options,
    )


def main(argv: list[str]) -> None:
    """``argv[1]``: JSON of host, port, workers, log_level and log (the format)."""
    options = json.loads(argv[1])
    fmt = options.pop("log")
    run(
        "service.app:create_app",
        factory=True,
        log_config=log_config(fmt, options["log_level"]),
        **options,
    )


if __name__ == "__main__":
    main(sys.argv)
