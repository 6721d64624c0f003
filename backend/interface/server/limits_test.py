import resource

import pytest

from backend.interface.server.limits import raise_open_files_limit


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        with caplog.at_level("INFO", logger="backend.interface.server.limits"):
            now = raise_open_files_limit()
        assert now == (hard if hard != resource.RLIM_INFINITY else lowered)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now
        assert f"open-files limit: {now}" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
