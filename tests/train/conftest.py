"""Fixtures of the engine's tests."""
import pytest


@pytest.fixture(autouse=True)
def engine_tests_use_one_thread(one_thread):
    yield
