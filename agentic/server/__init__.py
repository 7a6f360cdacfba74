"""The reference task API server (FastAPI): ``create_app(store, ...)``.

Needs the ``server`` extra (``pip install 'agentic[server]'``).
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
