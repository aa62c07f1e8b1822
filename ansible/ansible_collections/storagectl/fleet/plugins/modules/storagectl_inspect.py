#!/usr/bin/python
# Copyright: storagectl developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: storagectl_inspect
short_description: Infer the storage layout of a compute host's instances with storagectl
version_added: 0.1.0
description:
  - Runs C(storagectl inspect -o json) on the managed host and returns every instance with
    its disks (backend, format, location, sizes, what Nova would open) and findings.
  - Read-only, so never C(changed); runs the same in check mode.
  - Fails when a hypervisor could not be scanned or an O(instances) entry was not found
    (storagectl's exit status 1), with the partial result in C(inspect).
options:
  instances:
    description:
      - Only these instances, by uuid or libvirt domain name. Default is every instance.
    type: list
    elements: str
  assume:
    description:
      - Read nova.conf as if it also said these settings (C(--assume)).
    type: list
    elements: str
extends_documentation_fragment:
  - storagectl.fleet.common
attributes:
  check_mode:
    support: full
    description: Read-only.
  diff_mode:
    support: none
author:
  - storagectl developers
"""

EXAMPLES = r"""
- name: Every instance of this host, as facts
  storagectl.fleet.storagectl_inspect:
  register: inspected

- name: The instances Nova would misread if the host were switched to RBD
  storagectl.fleet.storagectl_inspect:
    assume: ["[libvirt] images_type=rbd"]
  register: what_if
"""

RETURN = r"""
inspect:
  description: The output of C(storagectl inspect -o json) - C(hosts) and C(instances).
  returned: when storagectl printed it
  type: dict
instances:
  description: C(inspect.instances) - uuid, name, host, state, source (record or inferred),
    disks and findings of each instance.
  returned: when storagectl printed it
  type: list
  elements: dict
  sample: [{"uuid": "0ca2aaa2-0736-4171-802f-04171d95b8fa", "name": "instance-00000101",
            "host": "cn7", "state": "running", "source": "inferred", "disks": [],
            "findings": []}]
hosts:
  description: C(inspect.hosts) - each hypervisor's uri, hostname and error (null when scanned).
  returned: when storagectl printed it
  type: list
  elements: dict
cmd:
  description: The command line that ran.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.storagectl.fleet.plugins.module_utils.storagectl import (
    ASSUME_ARG,
    Storagectl,
    argument_spec,
    last_error,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            instances=dict(type="list", elements="str"),
            **ASSUME_ARG
        ),
        supports_check_mode=True,
    )
    tool = Storagectl(module)
    args = ["inspect", "-o", "json"] + tool.assume_args() + list(module.params["instances"] or [])
    rc, out, err, argv = tool.run(*args)
    data = tool.parse(out)
    if data is None or rc not in (0, 1):
        tool.fail("storagectl inspect failed", rc, out, err, argv)
    result = dict(
        changed=False,
        inspect=data,
        instances=data.get("instances") or [],
        hosts=data.get("hosts") or [],
        cmd=argv,
    )
    if rc == 1:
        errors = [h["error"] for h in result["hosts"] if h.get("error")]
        reason = "; ".join(errors) or last_error(err) or "exit status 1"
        module.fail_json(msg="storagectl inspect: %s" % reason, rc=rc, stderr=err, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
