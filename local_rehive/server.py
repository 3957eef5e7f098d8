"""`serve()`: run the stand-in on a real HTTP server in a background thread."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from local_rehive.app import create_app
from local_rehive.state import Platform, platform_of

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8100


class RunningServer:
    """A stand-in answering on `url` from a background thread until `shutdown()`."""

    def __init__(self, app: Flask, server: BaseWSGIServer) -> None:
        self.app = app
        self.host = server.host
        self.port = server.port
        self.url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"
        self._server = server
        self._stopped = False
        # A short poll interval keeps shutdown() quick; the server thread does nothing else.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-rehive", daemon=True
        )
        self._thread.start()

    @property
    def platform(self) -> Platform:
        """Return the stand-in's state (store, knobs, courier), for in-process inspection."""
        return platform_of(self.app)

    def shutdown(self) -> None:
        """Stop serving, close the socket and stop webhook delivery; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self.platform.courier.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.shutdown()


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **options: Any) -> RunningServer:
    """Start a threaded stand-in on `host:port` (port 0: a free one); `options` go to `create_app`."""
    app = create_app(**options)
    return RunningServer(app, make_server(host, port, app, threaded=True))
