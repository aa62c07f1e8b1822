"""The guest tier's fixtures (tests/lvm_guest/conftest.py) for the live-LVM tests run by hand."""

from tests.lvm_guest.conftest import *  # noqa: F403
