from __future__ import annotations

import pytest

from storagectl import errors
from storagectl.host.config import load_nova_config


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_when_default_file_is_absent(tmp_path):
    cfg = load_nova_config([str(tmp_path / "nope.conf")], explicit=False)
    assert cfg.files == ()
    assert cfg.instances_path == "/var/lib/nova/instances"
    assert cfg.image_cache_path == "/var/lib/nova/instances/_base"
    assert cfg.use_cow_images is True and cfg.force_raw_images is True
    assert cfg.images_type == "default" and cfg.effective_images_type == "qcow2"
    assert cfg.images_rbd_pool == "rbd"
    assert cfg.images_rbd_ceph_conf == "/etc/ceph/ceph.conf"
    assert cfg.rbd_user is None and cfg.images_volume_group is None


def test_explicit_missing_file_is_an_error_naming_it(tmp_path):
    missing = str(tmp_path / "nova.conf")
    with pytest.raises(errors.ConfigError) as exc:
        load_nova_config([missing])
    assert missing in str(exc.value)


def test_later_files_override_and_state_path_substitution(tmp_path):
    a = write(
        tmp_path,
        "a.conf",
        "[DEFAULT]\nstate_path = /srv/nova\nuse_cow_images = True\n"
        "[libvirt]\nimages_type = qcow2\n",
    )
    b = write(
        tmp_path,
        "b.conf",
        "[DEFAULT]\nuse_cow_images = false\n"
        "[libvirt]\nimages_type = lvm\nimages_volume_group = nova-vg\n"
        "sparse_logical_volumes = yes\n[image_cache]\nsubdirectory_name = cache\n",
    )
    cfg = load_nova_config([a, b])
    assert cfg.files == (a, b)
    assert cfg.instances_path == "/srv/nova/instances"
    assert cfg.image_cache_path == "/srv/nova/instances/cache"
    assert cfg.use_cow_images is False
    assert cfg.effective_images_type == "lvm"
    assert cfg.images_volume_group == "nova-vg"
    assert cfg.sparse_logical_volumes is True


def test_braced_substitution_and_old_cache_option(tmp_path):
    a = write(
        tmp_path,
        "a.conf",
        "[DEFAULT]\nstate_path=/x\ninstances_path=${state_path}/i\n"
        "image_cache_subdirectory_name = old_base\n",
    )
    cfg = load_nova_config([a])
    assert cfg.instances_path == "/x/i"
    assert cfg.image_cache_subdirectory == "old_base"


def test_default_images_type_without_cow_is_flat(tmp_path):
    a = write(tmp_path, "a.conf", "[DEFAULT]\nuse_cow_images=False\n")
    assert load_nova_config([a]).effective_images_type == "flat"
    b = write(tmp_path, "b.conf", "[libvirt]\nimages_type=raw\n")
    assert load_nova_config([b]).effective_images_type == "flat"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[libvirt]\nimages_type = zfs\n", "images_type"),
        ("[DEFAULT]\nuse_cow_images = maybe\n", "use_cow_images"),
        ("not an ini file at all\n", "a.conf"),
    ],
)
def test_bad_values_name_the_option_or_file(tmp_path, text, fragment):
    a = write(tmp_path, "a.conf", text)
    with pytest.raises(errors.ConfigError) as exc:
        load_nova_config([a])
    assert fragment in str(exc.value)
