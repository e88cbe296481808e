"""nocp: an LLM context-compression reverse proxy.

Public surface: :func:`create_app`, :class:`Settings` and :func:`load_settings`,
:class:`Pipeline` and :class:`StageContext` for custom stages, the exceptions in
:mod:`proxy.exceptions`, and the fake provider in :mod:`proxy.testing`.
"""

from proxy.config import Settings, UpstreamConfig, load_settings
from proxy.pipeline import Pipeline, Stage, StageContext
from proxy.server import create_app

__version__ = "0.1.0"
__all__ = [
    "Pipeline",
    "Settings",
    "Stage",
    "StageContext",
    "UpstreamConfig",
    "__version__",
    "create_app",
    "load_settings",
]
