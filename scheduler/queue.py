"""Publishing segments to the broker: after the plan is committed (enqueue), and again for
segments whose message was lost or whose worker died (requeue)."""

from __future__ import annotations

from collections.abc import Sequence

from worker.celery_app import SEGMENT_TASK, app, queue_name


def publish(segment_ids: Sequence[int], queue: str | None = None) -> int:
    """One task per segment id on `queue` (default NBHR_QUEUE), over one broker connection.
    Call only after the segments are committed: a worker may start on them at once."""
    queue = queue or queue_name()
    with app.producer_or_acquire() as producer:
        for sid in segment_ids:
            app.send_task(SEGMENT_TASK, args=(int(sid),), queue=queue, producer=producer)
    return len(segment_ids)


def requeue(segment_ids: Sequence[int], queue: str | None = None) -> int:
    """Publish again segments found by db.queries.segments_to_requeue. A segment that still
    has a message somewhere gets a second one; the claim lets one through and the other ends
    without work."""
    return publish(segment_ids, queue)
