"""The test suite (see tests/conftest.py); ``REPO`` is the repository's root."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
