import pytest

from worker import training


@pytest.fixture(autouse=True)
def no_database_retry_wait(monkeypatch):
    """A job queued again after a database error waits before it is sent (seconds); the tests
    that are not about that wait do not."""
    monkeypatch.setattr(training, "DATABASE_RETRY_SECONDS", 0.0)
