"""The filer protocol: durable message queues made of plain directories.

A queue holds ``incoming/`` (complete messages), ``pending/`` (claimed by one
worker through an atomic rename), ``tmp/`` (where writers create files) and
``errors/`` (failed messages with a sidecar saying why).
"""

from .names import new_name
from .owner import Owner
from .queue import CLAIM, DROP, BadMessage, Batch, Claim, Queue
from .states import Durability, Outcome, Reason

__all__ = [
    "CLAIM", "DROP", "BadMessage", "Batch", "Claim", "Durability", "Outcome", "Owner", "Queue",
    "Reason", "new_name",
]
