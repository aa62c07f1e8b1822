"""The Nova view: one test per rule of nova/virt/libvirt/imagebackend.py and driver.py
(docs/design/nova-view.md), on real files; LVM and Ceph listings as a StorageView holds
them (the listings themselves are tested against real lvm2 / Ceph in their tiers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storagectl.backends.lvm import LVMLocation
from storagectl.backends.rbd import RBDLocation
from storagectl.host.config import load_nova_config, parse_assumption
from storagectl.host.process import Runner
from storagectl.inspect.nova import candidates, nova_view
from storagectl.inspect.storage import Listing, StorageView, Volume
from storagectl.model.layout import Backend, DiskLayout, Role
from storagectl.model.naming import role_of

UUID = "0b5e6f3c-1d2a-4e8b-9c7d-3f4a5b6c7d8e"


class View(StorageView):
    """A StorageView whose LVM / Ceph listings are given (key -> Listing)."""

    def __init__(self, listings: dict[tuple, Listing] | None = None) -> None:
        super().__init__(Runner())
        self.given = listings or {}

    def listing(self, key, make):  # noqa: ANN001, ANN201
        return self.given.get(key) or Listing(missing=True, error="no such VG or pool")


def nova_conf(tmp_path: Path, **libvirt: str) -> object:
    default = {"use_cow_images": libvirt.pop("use_cow_images", "true")}
    text = f"[DEFAULT]\ninstances_path = {tmp_path}\n"
    text += "".join(f"{k} = {v}\n" for k, v in default.items())
    text += "[libvirt]\n" + "".join(f"{k} = {v}\n" for k, v in libvirt.items())
    conf = tmp_path / "nova.conf"
    conf.write_text(text)
    return load_nova_config([conf])


def file_disk(tmp_path: Path, name: str, fmt: str, backend: Backend, *, create=True) -> DiskLayout:
    inst = tmp_path / UUID
    inst.mkdir(exist_ok=True)
    path = inst / name
    if create:
        path.write_bytes(b"\0" * 512)
    return DiskLayout(name, role_of(name), "vda", backend, fmt, path=str(path))


def lvm_disk(name: str, vg: str = "nova", device: str | None = None) -> DiskLayout:
    lv = f"{UUID}_{name.replace('_', '__')}"
    loc = LVMLocation(vg, lv, device=device)
    return DiskLayout(name, role_of(name), "vda", Backend.LVM, "raw", **loc.disk_fields())


def rbd_disk(name: str, pool: str = "vms") -> DiskLayout:
    loc = RBDLocation(pool, f"{UUID}_{name}", "/etc/ceph/ceph.conf", "nova")
    return DiskLayout(name, role_of(name), "vda", Backend.RBD, "raw", **loc.disk_fields())


def disk_info(tmp_path: Path, entries: dict[str, str]) -> dict[str, str]:
    (tmp_path / UUID / "disk.info").write_text(json.dumps(entries))
    return entries


def lvs(vg: str, *names: str) -> dict[tuple, Listing]:
    return {("lvm", vg): Listing({n: Volume(1 << 30) for n in names})}


def images(pool: str, *names: str, user: str = "nova") -> dict[tuple, Listing]:
    return {
        ("rbd", pool, "/etc/ceph/ceph.conf", user): Listing({n: Volume(1 << 30) for n in names})
    }


# -- images_type=default: use_cow_images chooses Qcow2 or Flat ----------------------------


def test_default_with_cow_is_qcow2_and_reads_a_qcow2_disk_as_stored(tmp_path):
    nova = nova_conf(tmp_path)
    disk = file_disk(tmp_path, "disk", "qcow2", Backend.QCOW2)
    view, why = nova_view(disk, UUID, nova, View(), None)
    assert (view.images_type, view.location, view.format) == ("qcow2", disk.path, "qcow2")
    assert view.matches and why is None


def test_qcow2_host_reads_a_raw_disk_as_qcow2(tmp_path):
    nova = nova_conf(tmp_path)
    disk = file_disk(tmp_path, "disk", "raw", Backend.FLAT)
    # even when disk.info says raw: Nova's Qcow2 image is always qcow2
    view, why = nova_view(disk, UUID, nova, View(), disk_info(tmp_path, {disk.path: "raw"}))
    assert view.format == "qcow2" and not view.matches
    assert "would open it as qcow2" in why and "host-data leak" in why
    assert "images_type=default, use_cow_images=true" in why


def test_default_without_cow_is_flat_and_takes_the_format_from_disk_info(tmp_path):
    nova = nova_conf(tmp_path, use_cow_images="false")
    disk = file_disk(tmp_path, "disk.local", "raw", Backend.FLAT)
    view, why = nova_view(disk, UUID, nova, View(), disk_info(tmp_path, {disk.path: "raw"}))
    assert (view.images_type, view.format, view.matches, why) == ("flat", "raw", True, None)


def test_flat_without_a_disk_info_entry_probes_a_raw_disk(tmp_path):
    nova = nova_conf(tmp_path, images_type="flat")
    disk = file_disk(tmp_path, "disk", "raw", Backend.FLAT)
    view, why = nova_view(disk, UUID, nova, View(), {"/elsewhere/disk": "raw"})
    assert view.format is None and not view.matches
    assert "disk.info has no entry" in why and "probe" in why


def test_flat_probing_a_qcow2_disk_finds_qcow2(tmp_path):
    """A qcow2 header is not guest-writable: the probe gives the stored format."""
    nova = nova_conf(tmp_path, images_type="flat")
    disk = file_disk(tmp_path, "disk", "qcow2", Backend.QCOW2)
    view, why = nova_view(disk, UUID, nova, View(), None)
    assert view.format is None and view.matches and why is None


def test_flat_with_disk_info_saying_qcow2_for_a_raw_disk(tmp_path):
    nova = nova_conf(tmp_path, images_type="raw")  # the deprecated spelling of flat
    disk = file_disk(tmp_path, "disk", "raw", Backend.FLAT)
    view, why = nova_view(disk, UUID, nova, View(), disk_info(tmp_path, {disk.path: "qcow2"}))
    assert (view.images_type, view.format) == ("flat", "qcow2") and "as qcow2" in why


# -- LVM --------------------------------------------------------------------------------


def test_lvm_names_the_lv_uuid_underscore_name(tmp_path):
    nova = nova_conf(tmp_path, images_type="lvm", images_volume_group="nova")
    disk = lvm_disk("disk.local")
    view, why = nova_view(disk, UUID, nova, View(lvs("nova", f"{UUID}_disk.local")), None)
    assert view.location == f"/dev/nova/{UUID}_disk.local"
    assert view.matches and view.exists and why is None


def test_lvm_in_another_volume_group_is_another_volume_or_missing(tmp_path):
    nova = nova_conf(tmp_path, images_type="lvm", images_volume_group="other")
    disk = lvm_disk("disk", vg="nova")
    view, why = nova_view(disk, UUID, nova, View(), None)
    assert view.exists is False and f"/dev/other/{UUID}_disk" in why
    assert "hard reboot fails" in why and "a fresh copy of the image" in why
    view, why = nova_view(disk, UUID, nova, View(lvs("other", f"{UUID}_disk")), None)
    assert view.exists and "another volume" in why


def test_lvm_without_a_volume_group_cannot_be_opened(tmp_path):
    nova = nova_conf(tmp_path, images_type="lvm")
    view, why = nova_view(lvm_disk("disk"), UUID, nova, View(), None)
    assert view.location is None and "images_volume_group is not set" in why


def test_an_encrypted_lv_is_opened_through_its_dmcrypt_mapping(tmp_path):
    nova = nova_conf(tmp_path, images_type="lvm", images_volume_group="nova")
    lv = f"{UUID}_disk"
    disk = lvm_disk("disk", device=f"/dev/mapper/{lv}-dmcrypt")
    view, why = nova_view(disk, UUID, nova, View(lvs("nova", lv)), None)
    assert view.location == f"/dev/mapper/{lv}-dmcrypt" and view.matches and why is None
    # the plain LV of an encrypted disk is ciphertext: not the stored place
    plain = lvm_disk("disk")
    view, _ = nova_view(plain, UUID, nova, View(lvs("nova", lv)), None)
    assert view.location == f"/dev/nova/{lv}"


def test_an_lv_on_a_file_host_is_missing_and_leaks_at_delete(tmp_path):
    nova = nova_conf(tmp_path)
    view, why = nova_view(lvm_disk("disk.swap"), UUID, nova, View(), None)
    assert view.location == str(tmp_path / UUID / "disk.swap") and view.exists is False
    assert "creates an empty disk there" in why
    assert "leave /dev/nova/" in why and "only with images_type=lvm" in why


# -- RBD ----------------------------------------------------------------------------------


def test_rbd_names_the_image_in_images_rbd_pool(tmp_path):
    nova = nova_conf(tmp_path, images_type="rbd", images_rbd_pool="vms", rbd_user="nova")
    view, why = nova_view(rbd_disk("disk"), UUID, nova, View(images("vms", f"{UUID}_disk")), None)
    assert (view.location, view.format, view.matches, why) == (
        f"rbd:vms/{UUID}_disk",
        "raw",
        True,
        None,
    )


def test_rbd_in_another_pool(tmp_path):
    nova = nova_conf(tmp_path, images_type="rbd", images_rbd_pool="other", rbd_user="nova")
    view, why = nova_view(rbd_disk("disk"), UUID, nova, View(), None)
    assert view.location == f"rbd:other/{UUID}_disk" and not view.matches
    assert "leave" not in why  # Nova (rbd) removes rbd images


def test_a_file_on_an_rbd_host(tmp_path):
    nova = nova_conf(tmp_path, images_type="rbd", images_rbd_pool="vms", rbd_user="nova")
    disk = file_disk(tmp_path, "disk", "qcow2", Backend.QCOW2)
    view, why = nova_view(disk, UUID, nova, View(images("vms")), None)
    assert view.location == f"rbd:vms/{UUID}_disk" and view.exists is False
    assert "hard reboot fails" in why


def test_ceph_unreachable_says_so(tmp_path):
    nova = nova_conf(tmp_path, images_type="rbd", images_rbd_pool="vms", rbd_user="nova")
    disk = file_disk(tmp_path, "disk", "qcow2", Backend.QCOW2)
    broken = {("rbd", "vms", "/etc/ceph/ceph.conf", "nova"): Listing(error="timed out")}
    view, why = nova_view(disk, UUID, nova, View(broken), None)
    assert view.exists is None and "could not be checked" in why


# -- the config drive ------------------------------------------------------------------------


def test_config_drive_is_a_flat_file_unless_images_type_is_rbd(tmp_path):
    for conf in ({}, {"images_type": "lvm", "images_volume_group": "nova"}):
        nova = nova_conf(tmp_path, **conf)
        assert candidates("disk.config", nova) == ("flat",)
        disk = file_disk(tmp_path, "disk.config", "raw", Backend.FLAT)
        info = disk_info(tmp_path, {disk.path: "raw"})
        view, why = nova_view(disk, UUID, nova, View(), info)
        assert (view.images_type, view.matches, why) == ("flat", True, None)


def test_config_drive_on_rbd_and_the_fallback_to_the_local_file(tmp_path):
    nova = nova_conf(tmp_path, images_type="rbd", images_rbd_pool="vms", rbd_user="nova")
    assert candidates("disk.config", nova) == ("rbd", "flat")
    assert candidates("disk.config.rescue", nova) == ("rbd",)  # only disk.config falls back
    local = file_disk(tmp_path, "disk.config", "raw", Backend.FLAT)
    info = disk_info(tmp_path, {local.path: "raw"})
    # not in the pool, the local file exists: Nova uses the file
    view, why = nova_view(local, UUID, nova, View(images("vms")), info)
    assert (view.images_type, view.matches, why) == ("flat", True, None)
    # imported into the pool: Nova opens the image, not the file
    view, why = nova_view(local, UUID, nova, View(images("vms", f"{UUID}_disk.config")), info)
    assert view.images_type == "rbd" and "another volume" in why
    # stored in RBD, found there
    drive = rbd_disk("disk.config")
    view, why = nova_view(drive, UUID, nova, View(images("vms", f"{UUID}_disk.config")), info)
    assert view.matches and why is None


def test_rescue_disks_follow_images_type(tmp_path):
    nova = nova_conf(tmp_path, images_type="lvm", images_volume_group="nova")
    disk = file_disk(tmp_path, "disk.rescue", "qcow2", Backend.QCOW2)
    assert disk.role is Role.RESCUE
    view, why = nova_view(disk, UUID, nova, View(lvs("nova")), None)
    assert view.location == f"/dev/nova/{UUID}_disk.rescue" and "fails" in why


def test_volumes_and_kernel_files_have_no_view(tmp_path):
    nova = nova_conf(tmp_path, images_type="rbd")
    for role, backend in ((Role.VOLUME, Backend.VOLUME), (Role.KERNEL, Backend.FLAT)):
        disk = DiskLayout("kernel", role, None, backend, "raw", path=str(tmp_path / "k"))
        assert nova_view(disk, UUID, nova, View(), None) == (None, None)


# -- --assume ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("[libvirt] images_type=rbd", ("libvirt", "images_type", "rbd")),
        ("images_type = lvm", ("libvirt", "images_type", "lvm")),
        ("DEFAULT/use_cow_images=false", ("DEFAULT", "use_cow_images", "false")),
    ],
)
def test_assume_spellings(text, parsed):
    assert parse_assumption(text) == parsed


@pytest.mark.parametrize("text", ["image_type=rbd", "[DEFAULT] images_type=rbd", "rbd", ""])
def test_assume_refuses_what_storagectl_does_not_read(text):
    from storagectl import errors

    with pytest.raises(errors.UsageError) as exc:
        parse_assumption(text)
    assert repr(text) in str(exc.value)


def test_assume_overrides_the_files(tmp_path):
    conf = tmp_path / "nova.conf"
    conf.write_text("[libvirt]\nimages_type = qcow2\n")
    nova = load_nova_config([conf], assume=[parse_assumption("images_type=rbd")])
    assert nova.effective_images_type == "rbd" and nova.files == (str(conf),)
    assert nova.assumed == ("[libvirt] images_type=rbd",)
