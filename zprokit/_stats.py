"""What ``Main.stats()`` and ``Window.stats()`` return, as ``TypedDict``s (for type checkers only).

At run time both are plain ``dict``s. The keys of the base classes are always
there; the ``total=False`` ones appear once their counter has counted
something. ``rejected`` counts messages dropped unread, by reason (every
reason of ``zprokit.security.REJECTION_REASONS`` is there, at 0 or more).
"""

from __future__ import annotations

from typing import TypedDict

__all__ = ["MainStats", "WindowStats", "MAIN_COUNTERS", "WINDOW_COUNTERS"]

# Counters each stats() reports even before the first count (the rest appear when they happen).
MAIN_COUNTERS = ("messages_in", "messages_out", "requests_served", "messages_routed", "unhandled", "disconnects",
                 "dropped_hwm", "broadcasts", "broadcasts_refused", "refused_busy", "cancelled_before_start",
                 "late_answers")
WINDOW_COUNTERS = ("messages_in", "messages_out", "unhandled", "late_replies", "broadcast_link_lost",
                   "broadcasts_missed", "callback_errors", "cancelled_before_start")


class _MainStatsAlways(TypedDict):
    messages_in: int
    messages_out: int  # broadcasts included
    requests_served: int
    messages_routed: int  # window -> window, carried by the main
    unhandled: int
    disconnects: int  # connections closed: windows leaving, strangers, a frame over max_message_size
    broadcasts: int
    windows: int  # windows registered now
    pending_requests: int  # main_call_render calls awaiting an answer
    pending_routes: int  # window -> window requests being carried
    requests_queued: int  # windows' requests waiting for the handler pool
    requests_running: int  # windows' requests whose handler runs (async ones included)
    handoffs: int  # handlers that ran long on the I/O thread, which then passed to another thread
    rejected: dict[str, int]


class MainStats(_MainStatsAlways, total=False):
    """``Main.stats()``."""

    broadcasts_refused: int  # broadcasts that found a window's queue full for their whole timeout: QueueFull
    cancelled_before_start: int  # requests whose caller gave up while they waited for the pool: never run
    dropped_hwm: int  # messages not sent: the peer's queue was full (the sender is told: QueueFull)
    unroutable: int  # messages not sent: no connection has that routing id (any more)


class _WindowStatsAlways(TypedDict):
    messages_in: int
    messages_out: int
    unhandled: int
    late_replies: int  # answers that came after their request timed out
    broadcast_link_lost: int
    callback_errors: int  # one-way and broadcast callbacks that raised
    cancelled_before_start: int
    pending_requests: int  # calls awaiting an answer
    requests_queued: int  # calls to this window waiting for the callback pool
    requests_running: int  # calls to this window whose callback runs
    handoffs: int  # callbacks that ran long on the I/O thread, which then passed to another thread
    rejected: dict[str, int]


class WindowStats(_WindowStatsAlways, total=False):
    """``Window.stats()``."""

    dropped_hwm: int  # messages not sent: the queue to the main was full
