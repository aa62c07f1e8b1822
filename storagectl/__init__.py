"""storagectl: an explicit storage-layout record for libvirt/Nova compute hosts."""

__version__ = "0.1.0"
