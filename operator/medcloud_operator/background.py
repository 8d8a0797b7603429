"""What the handlers register besides Kopf's own handlers: child watches, the safety net's kinds, watch hooks.

Both run outside Kopf (:mod:`medcloud_operator.childwatch`,
:mod:`medcloud_operator.safetynet`), started by the operator's startup
handler (``medcloud_operator.main``). The kinds' ``register`` functions add to
the collection of the Kopf registry they register into, so one registry (one
operator, or one test) holds exactly its own.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import kopf

from medcloud_operator.childwatch import ChildWatch
from medcloud_operator.safetynet import SafetyNet


@dataclass
class Background:
    child_watches: list[ChildWatch] = field(default_factory=list)
    safety_net: SafetyNet = field(default_factory=SafetyNet)
    watch_hooks: dict[str, list[Callable[..., Awaitable[None]]]] = field(default_factory=dict)
    """Per kind, what else its watch events feed (indexes, counts), called from the kind's one Kopf event handler
    as a Kopf event handler would be: one Kopf handler per event instead of one per concern."""
    kopf_context: contextvars.Context | None = None
    """A context as Kopf's own handlers run in (its settings, its Event poster), taken from the first one
    that ran: Kopf's startup handlers run before the poster exists, so the watches' handlers borrow this."""


_BY_REGISTRY: WeakKeyDictionary[kopf.OperatorRegistry, Background] = WeakKeyDictionary()


def of(registry: kopf.OperatorRegistry) -> Background:
    """The background work registered with ``registry`` (empty until a kind registers some)."""
    found = _BY_REGISTRY.get(registry)
    if found is None:
        found = _BY_REGISTRY[registry] = Background()
    return found
