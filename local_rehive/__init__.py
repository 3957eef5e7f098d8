"""A local stand-in for Rehive's API: a real HTTP server with seeded data, webhooks and fault knobs."""

from local_rehive.app import create_app
from local_rehive.knobs import Knobs
from local_rehive.seed import DEMO_SERVICE_TOKEN, OTHER_SERVICE_TOKEN
from local_rehive.server import RunningServer, serve

__all__ = ["DEMO_SERVICE_TOKEN", "OTHER_SERVICE_TOKEN", "Knobs", "RunningServer", "create_app", "serve"]
