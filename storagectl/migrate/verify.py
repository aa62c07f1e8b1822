"""The verify step: the guest-visible contents of source and target must be identical.

Runs, with explicit formats on both sides::

    qemu-img compare -f qcow2 -F raw SRC TARGET
    Images are identical.                     (exit 0)
    Content mismatch at offset 1048576!       (exit 1)

An LV is rounded up to whole extents and its tail is not zeroed, so when an LV is
involved both sides are opened with ``--image-opts`` and the raw driver's ``size`` limits
the LV to the disk's virtual size::

    qemu-img compare --image-opts driver=qcow2,file.driver=file,file.filename=SRC \\
        driver=raw,size=1073741824,file.driver=host_device,file.filename=/dev/vg/U_disk

What a passed verify guarantees: the copy step has flushed the target (``-t none`` and
an fsync, see copy.py) before the journal said "copy done"; verify then fsyncs a file
or LV target again and drops its clean pages from the page cache
(``POSIX_FADV_DONTNEED``), so ``qemu-img compare`` reads the target from the device,
not from memory: "Images are identical" is a statement about the bytes the device has
acknowledged as stable, which is what the instance boots from after a power cut. An
RBD target is read from the OSDs (a new librbd client has no cache). The source is read
through the page cache (``-T`` stays at its default): it was not written by us, and
``-T none`` made the compare 4-7x slower (bench/RESULTS.md). Verify does not detect
corruption that the device introduces later (bit rot): that is the storage's checksums'
job.
"""

from __future__ import annotations

import logging

from storagectl import errors
from storagectl.backends import Storage
from storagectl.host.process import Runner
from storagectl.migrate.plan import DiskMove

LOG = logging.getLogger(__name__)
COMPARE_TIMEOUT = 24 * 3600


class VerifyFailed(errors.StorageCtlError):
    template = "disk %(disk)s: the copy differs from the source (%(detail)s)"


def compare_argv(move: DiskMove, storage: Storage, *, shared: bool = False) -> list[str]:
    """``shared``: both images are open in a running (suspended) QEMU - the source as the
    guest's disk, the target as its block copy's, whose "consistent read" lock even
    ``-U`` cannot share - so local files are opened with ``locking=off``
    (:func:`storagectl.backends.unlocked`)."""
    from storagectl.backends import unlocked

    argv = ["qemu-img", "compare"]
    src_loc, dst_loc = move.source, move.copy_dest
    src_b, dst_b = storage.of(src_loc), storage.of(dst_loc)
    size = move.virtual_size
    if (src_b.ROUNDED_SIZE or dst_b.ROUNDED_SIZE) and not src_b.VETTED:
        # e.g. lvm <-> rbd: no file header to vet; --image-opts carries the size limit.
        opts = [
            storage.qemu_spec(src_loc, size=size).image_opts,
            storage.qemu_spec(dst_loc, size=size).image_opts,
        ]
        if shared:
            opts = [_unlocked_opts(o) for o in opts]
        return [*argv, "--image-opts", *opts]
    # The source's chain is vetted again and named explicitly, as for the copy: qemu-img
    # never follows a backing name from a header (storagectl.inspect.verify.copy_source).
    # Beside a file, an LV is a json: name cut to the disk's size.
    src, dst = storage.qemu_spec(src_loc), storage.qemu_spec(dst_loc)
    src_name = storage.read_name(src_loc)
    dst_name = dst_b.sized_name(dst_loc, size) if dst_b.ROUNDED_SIZE else dst.filename
    if shared:
        src_name, dst_name = unlocked(src_name, src.format), unlocked(dst_name, dst.format)
    return [*argv, "-f", src.format, "-F", dst.format, src_name, dst_name]


def _unlocked_opts(opts: str) -> str:
    if "file.driver=file" in opts or "file.driver=host_device" in opts:
        return opts + ",file.locking=off"
    return opts


def verify_disk(move: DiskMove, storage: Storage, runner: Runner, *, shared: bool = False) -> None:
    """Raise :class:`VerifyFailed` unless the target holds exactly the source's data
    on the media (see the module docstring); ``shared``: see :func:`compare_argv`."""
    storage.of(move.copy_dest).before_compare(move.copy_dest)
    argv = compare_argv(move, storage, shared=shared)
    result = runner.run(*argv, ok_codes=(0, 1), timeout=COMPARE_TIMEOUT)
    if result.exit_code != 0:
        detail = (str(result.stdout) or str(result.stderr)).strip() or "exit status 1"
        raise VerifyFailed(disk=move.name, detail=detail)
    LOG.info("verified %s: %s", move.name, str(result.stdout).strip())
