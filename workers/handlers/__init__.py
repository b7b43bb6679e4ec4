"""Event handlers; importing this package registers them all."""

from workers.handlers import conversations, operators, webhooks  # noqa: F401
from workers.registry import Registry, registry


def registry_with_handlers() -> Registry:
    return registry
