"""Publishing segments to the broker: after the plan is committed (enqueue), and again for
segments whose message was lost or whose worker died (requeue)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Sequence

from worker.celery_app import SEGMENT_TASK, app, queue_name

log = logging.getLogger(__name__)
# Where kombu's Redis transport keeps delivered, not yet acknowledged messages.
_UNACKED_KEY = "unacked"


def publish(segment_ids: Sequence[int], queue: str | None = None) -> int:
    """One task per segment id on `queue` (default NBHR_QUEUE), over one broker connection.
    Call only after the segments are committed: a worker may start on them at once."""
    queue = queue or queue_name()
    with app.producer_or_acquire() as producer:
        for sid in segment_ids:
            app.send_task(SEGMENT_TASK, args=(int(sid),), queue=queue, producer=producer)
    return len(segment_ids)


def _segment_of(raw: bytes | str) -> int | None:
    """The segment id of one stored Celery message (kombu Redis transport, protocol 2)."""
    try:
        msg = json.loads(raw)
        if msg.get("headers", {}).get("task") != SEGMENT_TASK:
            return None
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def segments_in_broker(queue: str | None = None) -> set[int] | None:
    """Segment ids that have a message waiting in `queue` or delivered and not yet acknowledged;
    None when the broker is not Redis (then nothing can be ruled out)."""
    import redis

    url = app.conf.broker_url
    if not url.startswith(("redis://", "rediss://")):
        return None
    client = redis.Redis.from_url(url)
    try:
        # The queue first, then the unacknowledged set: a message moving from one to the other
        # between the two reads is still seen once.
        waiting: Iterable = client.lrange(queue or queue_name(), 0, -1)
        delivered = [
            json.dumps(json.loads(v)[0]) for v in client.hvals(_UNACKED_KEY) if v is not None
        ]
    finally:
        client.close()
    return {sid for raw in [*waiting, *delivered] if (sid := _segment_of(raw)) is not None}


def requeue(candidates: Sequence[int], queue: str | None = None) -> int:
    """Publish again the segments among `candidates` (db.queries.segments_to_requeue) that have
    no message in the broker; a second message would be harmless (the claim lets one through)
    but a long queue would otherwise double at every pass."""
    present = segments_in_broker(queue)
    todo = [sid for sid in candidates if present is None or sid not in present]
    if present is not None and len(todo) < len(candidates):
        already = len(candidates) - len(todo)
        log.info("requeue: %d of %d already have a message", already, len(candidates))
    return publish(todo, queue)
