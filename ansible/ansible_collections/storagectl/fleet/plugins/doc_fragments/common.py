# Copyright: storagectl developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    # The options every storagectl.fleet module takes: storagectl's global options.
    DOCUMENTATION = r"""
options:
  executable:
    description:
      - The storagectl executable on the managed host, a name looked up in C(PATH) or a path.
      - When it is missing the module fails saying so (its import guard).
    type: str
    default: storagectl
  uri:
    description:
      - libvirt URIs of the hypervisors (C(storagectl -c)), e.g. C(qemu:///system).
      - Default is storagectl's own (C($LIBVIRT_DEFAULT_URI) or C(qemu:///system)).
    type: list
    elements: str
    aliases: [connect]
  nova_conf:
    description:
      - nova.conf files to read (C(--nova-conf)), later ones override earlier ones.
      - Default is storagectl's own (C(/etc/nova/nova.conf)).
    type: list
    elements: path
  lock_path:
    description:
      - Directory of storagectl's per-instance lock files (C(--lock-path)).
    type: path
  log_file:
    description:
      - storagectl's debug log (C(--log-file)), with every command it ran and tracebacks.
    type: path
  connect_timeout:
    description:
      - Seconds to wait for a hypervisor before reporting it unreachable
        (C(--connect-timeout)).
    type: float
requirements:
  - storagectl on the managed host (the C(storagectl.fleet.storagectl_host) role installs it)
notes:
  - The module runs storagectl on the managed host with C(-o json) and returns its output
    as module results. storagectl's one-line error (C(--> Name, a sentence)) is the
    C(msg) of a failed task.
"""
