"""The extension build's lock file: a build killed mid-way leaves it behind, and torch's loader
would then wait forever; ``_clear_stale_lock`` waits for a live build and removes a dead one's."""

import logging
import os
import threading
import time

from sald_fast.ops import extension_backend as ext


def test_stale_lock_is_removed_with_a_warning(tmp_path, caplog):
    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - 2 * ext.STALE_LOCK_SECONDS
    os.utime(lock, (old, old))
    with caplog.at_level(logging.WARNING, logger=ext.logger.name):
        ext._clear_stale_lock(lock)
    assert not lock.exists()
    assert "stale build lock" in caplog.text


def test_live_lock_is_waited_for_not_removed(tmp_path, caplog):
    lock = tmp_path / "lock"
    lock.touch()
    removed_by_owner = []

    def owner_finishes():
        time.sleep(0.3)
        lock.unlink()
        removed_by_owner.append(True)

    t = threading.Thread(target=owner_finishes)
    t.start()
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger=ext.logger.name):
        ext._clear_stale_lock(lock, poll=0.02)
    t.join()
    assert removed_by_owner and time.perf_counter() - start >= 0.25
    assert "waiting for another process" in caplog.text and "stale" not in caplog.text


def test_no_lock_returns_at_once(tmp_path):
    ext._clear_stale_lock(tmp_path / "lock")
