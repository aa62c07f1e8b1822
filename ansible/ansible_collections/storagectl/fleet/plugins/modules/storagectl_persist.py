#!/usr/bin/python
# Copyright: storagectl developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: storagectl_persist
short_description: Record the storage layout of a compute host's instances (storage.yaml)
version_added: 0.1.0
description:
  - Runs C(storagectl persist -o json) on the managed host. Each instance is inferred as
    C(storagectl inspect) does and its record (C(<instances_path>/<uuid>/storage.yaml))
    written, left alone when identical, or refused (a critical finding; a different
    record without O(force)).
  - C(changed) only when a record was written (or, in check mode, would be). A second run
    on an unchanged host reports C(ok).
  - Check mode runs C(storagectl persist --dry-run -o json), which decides as a real run
    would and writes nothing.
  - Diff mode shows each written record before and after, as C(storagectl show -o json)
    prints it (the record that would be written, in check mode).
  - Fails when an instance was refused or not found, or a host could not be scanned
    (storagectl's exit status 1), unless O(allow_refused); the other instances are still
    persisted.
options:
  instances:
    description:
      - The instances to record, by uuid or domain name. Exclusive with O(all).
    type: list
    elements: str
  all:
    description:
      - Every instance of every hypervisor in O(uri) (C(--all)).
    type: bool
    default: false
  force:
    description:
      - Replace a different (or unreadable) record; storagectl keeps the old one as
        C(storage.yaml.<timestamp>.bak).
    type: bool
    default: false
  allow_refused:
    description:
      - Do not fail the task when storagectl refused an instance (exit status 1); the
        refused instances are in RV(refused).
    type: bool
    default: false
extends_documentation_fragment:
  - storagectl.fleet.common
attributes:
  check_mode:
    support: full
    description: C(storagectl persist --dry-run), which writes nothing.
  diff_mode:
    support: full
    description: The record of each instance written (or that would be written).
author:
  - storagectl developers
"""

EXAMPLES = r"""
- name: Record every instance of this host
  storagectl.fleet.storagectl_persist:
    all: true

- name: Re-record one instance whose layout changed, keeping the old record as a backup
  storagectl.fleet.storagectl_persist:
    instances: [0ca2aaa2-0736-4171-802f-04171d95b8fa]
    force: true
  diff: true
"""

RETURN = r"""
instances:
  description: The output of C(storagectl persist -o json) per instance - uuid, name,
    status (written, unchanged, refused, or would-write in check mode), reason, path of the
    record, backup and diff (of a refused, different record).
  returned: when storagectl printed it
  type: list
  elements: dict
  sample: [{"uuid": "0ca2aaa2-0736-4171-802f-04171d95b8fa", "name": "instance-00000101",
            "status": "written", "reason": null,
            "path": "/var/lib/nova/instances/0ca2aaa2-0736-4171-802f-04171d95b8fa/storage.yaml",
            "backup": null, "diff": null}]
written:
  description: uuids of the records written (in check mode, that would be written).
  returned: always
  type: list
  elements: str
unchanged:
  description: uuids whose record was already identical.
  returned: always
  type: list
  elements: str
refused:
  description: uuids storagectl refused, with the reason in RV(instances).
  returned: always
  type: list
  elements: str
cmd:
  description: The command line that ran.
  returned: always
  type: list
  elements: str
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.storagectl.fleet.plugins.module_utils.storagectl import (
    Storagectl,
    argument_spec,
    check_selection,
    last_error,
)

WRITES = ("written", "would-write")


def record_text(tool, uuid):
    """The record as ``storagectl show UUID -o json`` prints it, or '' when there is none."""
    rc, out, _err, _argv = tool.run("show", uuid, "-o", "json")
    data = tool.parse(out) if rc == 0 else None
    return render(data)


def render(record):
    return json.dumps(record, indent=2, sort_keys=True) + "\n" if record else ""


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            instances=dict(type="list", elements="str"),
            all=dict(type="bool", default=False),
            force=dict(type="bool", default=False),
            allow_refused=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    check_selection(module)
    tool = Storagectl(module)
    targets = ["--all"] if p["all"] else list(p["instances"])
    if p["force"]:
        targets.append("--force")
    before = {}
    if module._diff or module.check_mode:
        dry, rc, err, argv = tool.run_json("persist", "--dry-run", "-o", "json", *targets, ok=(0, 1))
        planned = dry.get("instances") or []
        if module._diff:
            before = {i["uuid"]: record_text(tool, i["uuid"])
                      for i in planned if i.get("status") in WRITES}
    if module.check_mode:
        data = dry
        after = {i["uuid"]: render(i.get("record")) for i in planned
                 if i.get("status") in WRITES}
    else:
        data, rc, err, argv = tool.run_json("persist", "-o", "json", *targets, ok=(0, 1))
        after = {u: record_text(tool, u) for u in before}
    items = data.get("instances") or []
    by_status = {}
    for item in items:
        by_status.setdefault(item.get("status"), []).append(item["uuid"])
    written = by_status.get("written", []) + by_status.get("would-write", [])
    result = dict(
        changed=bool(written),
        instances=items,
        written=written,
        unchanged=by_status.get("unchanged", []),
        refused=by_status.get("refused", []),
        cmd=argv,
    )
    if module._diff:
        result["diff"] = [
            dict(
                before=before.get(uuid, ""),
                after=after.get(uuid, ""),
                before_header="%s (record before)" % uuid,
                after_header="%s (record %s)" % (
                    uuid, "that would be written" if module.check_mode else "written"),
            )
            for uuid in written
        ]
    if rc != 0 and not p["allow_refused"]:
        reasons = ["%s: %s" % (i.get("name") or i["uuid"], i.get("reason"))
                   for i in items if i.get("status") == "refused"]
        reason = "; ".join(reasons) or last_error(err) or "exit status %d" % rc
        module.fail_json(msg="storagectl persist refused: %s" % reason, rc=rc, stderr=err,
                         **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
