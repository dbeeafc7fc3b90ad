"""At most four argon2 computations at once per process (SECURITY.md: a login storm cannot take
19 MiB per concurrent attempt without bound). In-process: the limit is a threading semaphore
around the hasher, observed by wrapping the hasher."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailstack.accounts import users
from mailstack.accounts.users import UserDB


class CountingHasher:
    """Delegates to a cheap argon2 hasher and records how many verify() calls overlap."""

    def __init__(self) -> None:
        self.real = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.calls = 0

    def hash(self, password: str) -> str:
        return self.real.hash(password)

    def verify(self, hashed: str, password: str) -> bool:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.05)  # long enough that all 16 threads pile up at the semaphore
            return self.real.verify(hashed, password)
        finally:
            with self.lock:
                self.now -= 1


def test_at_most_four_password_hashes_at_once(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingHasher()
    monkeypatch.setattr(users, "_hasher", counting)
    db = UserDB(tmp_path / "users")
    db.put_hash("alice@example.test", counting.hash("pw"))
    results: list[bool] = []

    def login(password: str) -> None:
        results.append(db.check_password("alice@example.test", password))

    threads = [threading.Thread(target=login, args=("pw" if n % 2 else "wrong",))
               for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counting.calls == 16 and sorted(results) == [False] * 8 + [True] * 8
    assert counting.most == 4, f"{counting.most} hashes ran at once"
