"""Queue names: valid ones are remembered, anything else is refused every time."""

from __future__ import annotations

import pytest

from backend.core.errors import InvalidQueueName
from backend.services.queues import MAX_QUEUE_NAME, validate_queue


def test_a_valid_name_is_returned_every_time() -> None:
    assert validate_queue("emails.outbox") == "emails.outbox"
    assert validate_queue("emails.outbox") == "emails.outbox"


@pytest.mark.parametrize(
    "name", [["emails"], {"q": 1}, 7, None, "", "bad name", "x" * (MAX_QUEUE_NAME + 1)]
)
def test_anything_else_is_refused_each_time_it_is_named(name: object) -> None:
    for _ in range(2):
        with pytest.raises(InvalidQueueName):
            validate_queue(name)
