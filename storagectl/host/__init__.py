"""The compute host: nova.conf, commands, files, libvirt, domain XML, locks."""
