"""The guest tier's fixtures (tests/lvm_guest/conftest.py), for the lvm_guest_live tier."""

from tests.lvm_guest.conftest import *  # noqa: F403
