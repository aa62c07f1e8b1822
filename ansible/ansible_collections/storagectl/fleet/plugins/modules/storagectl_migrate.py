#!/usr/bin/python
# Copyright: storagectl developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: storagectl_migrate
short_description: Move instances' disks to another backend, or convert a whole host
version_added: 0.1.0
description:
  - Plans with C(storagectl migrate ... --to X --dry-run -o json) (preflighted; in check
    mode that plan is the result and nothing changes), then runs
    C(storagectl migrate ... --to X --yes) for O(instances) or, with O(all), for every
    instance of the host (C(migrate --all), a whole-host conversion).
  - Only persisted instances move; a running one moves live (libvirt block copy) unless
    O(offline). What does not move is listed in the plan with the reason.
  - C(changed) when at least one instance moved. An instance has moved when its record
    (C(storagectl show -o json)) puts every planned disk on the target backend.
  - Fails when storagectl refuses the plan or a move fails (exit status 1), with its
    report; a failed move is journaled and C(storagectl migrate --resume) or
    C(--rollback) finishes it.
  - The nova.conf lines the host needs once every instance is moved are returned in
    RV(nova_conf); this module does not edit nova.conf.
options:
  to:
    description:
      - The target backend (C(--to)).
    type: str
    required: true
    choices: [flat, qcow2, lvm, rbd]
  instances:
    description:
      - The instances to move, by uuid or domain name. Exclusive with O(all).
    type: list
    elements: str
  all:
    description:
      - Convert the host, every instance of it (C(--all)).
    type: bool
    default: false
  from_backends:
    description:
      - With O(all), only disks on these backends (C(--from)).
    type: list
    elements: str
    aliases: [from]
  state:
    description:
      - With O(all), which instances to move (C(--state)); storagectl's default is any.
    type: str
    choices: [shutoff, running, any]
  disks:
    description:
      - Roles of the disks to move (C(--disks)), e.g. C(root), C(ephemeral), C(swap), C(config).
    type: list
    elements: str
  parallel:
    description:
      - Disks copied at once; with O(all), instances moved at once (C(--parallel)).
    type: int
  bwlimit:
    description:
      - Copy rate limit in MiB/s (C(--bwlimit)); with O(all), for the whole host.
    type: int
  offline:
    description:
      - Refuse to move running instances live (C(--offline)); with O(all) they are
        listed as skipped and never touched. Default is storagectl's own (a running
        instance moves live, by libvirt block copy).
    type: bool
    default: false
  keep_going:
    description:
      - With O(all), go on with the other instances after a failure (C(--keep-going)).
    type: bool
    default: false
  volume_group:
    description:
      - The LVM volume group of an C(lvm) target (default nova.conf's images_volume_group).
    type: str
  pool:
    description:
      - The Ceph pool of an C(rbd) target (default nova.conf's images_rbd_pool).
    type: str
  assume:
    description:
      - The nova.conf the host will have when the moves are done, as settings over its
        nova.conf (C(--assume)), e.g. C([libvirt] images_type=flat).
    type: list
    elements: str
  nova_conf_after:
    description:
      - The nova.conf files the host will have when the moves are done (C(--nova-conf-after)).
    type: list
    elements: path
extends_documentation_fragment:
  - storagectl.fleet.common
attributes:
  check_mode:
    support: full
    description: The plan (C(--dry-run -o json)), preflighted; nothing changes.
  diff_mode:
    support: none
author:
  - storagectl developers
"""

EXAMPLES = r"""
- name: The host plan (what would move, the space, the nova.conf to set)
  storagectl.fleet.storagectl_migrate:
    all: true
    to: flat
  check_mode: true
  register: plan

- name: Convert the host
  storagectl.fleet.storagectl_migrate:
    all: true
    to: flat
    parallel: 2
  register: converted

- name: Move one instance, for the nova.conf the host is about to get
  storagectl.fleet.storagectl_migrate:
    instances: [instance-00000101]
    to: flat
    assume: ["[libvirt] images_type=flat"]
"""

RETURN = r"""
plan:
  description: The output of C(storagectl migrate ... --dry-run -o json). With O(all) the
    host plan (C(instances) with their C(status) planned or skipped and the reason,
    C(space), C(nova_conf), C(still_misread_after)); otherwise C(plans), one per instance.
  returned: always
  type: dict
planned:
  description: uuids of the instances the plan moves.
  returned: always
  type: list
  elements: str
not_planned:
  description: The instances the plan does not move, each with its C(uuid), C(name) and
    C(reason) (running, no record, already on the target ...).
  returned: always
  type: list
  elements: dict
moved:
  description: uuids of the instances now on the target (empty in check mode).
  returned: always
  type: list
  elements: str
nova_conf:
  description: The nova.conf lines (C([section] option = value)) under which Nova reads
    the moved instances as stored; set them once every instance is moved.
  returned: always
  type: list
  elements: str
  sample: ["[libvirt] images_type = flat"]
nova_conf_settings:
  description: RV(nova_conf) parsed, one C(section), C(option), C(value) per line, for
    a task that sets them (e.g. with M(ansible.builtin.lineinfile)).
  returned: always
  type: list
  elements: dict
  sample: [{"section": "libvirt", "option": "images_type", "value": "flat"}]
still_misread_after:
  description: With O(all), instances Nova would still misread after the moves with that
    nova.conf (those not moved); empty when the host can be switched.
  returned: always
  type: list
  elements: str
report:
  description: What storagectl printed for the run (the moves, retained sources and the
    C(--delete-retained) commands, the nova.conf to set).
  returned: unless in check mode
  type: str
cmd:
  description: The command line of the run (of the plan, in check mode).
  returned: always
  type: list
  elements: str
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.storagectl.fleet.plugins.module_utils.storagectl import (
    ASSUME_ARG,
    Storagectl,
    argument_spec,
    check_selection,
    last_error,
)


def selection(p):
    """The migrate arguments both the plan and the run take."""
    args = ["--all"] if p["all"] else list(p["instances"])
    args += ["--to", p["to"]]
    for flag, key in (("--from", "from_backends"), ("--disks", "disks")):
        if p[key]:
            args += [flag, ",".join(p[key])]
    for flag, key in (("--state", "state"), ("--volume-group", "volume_group"),
                      ("--pool", "pool")):
        if p[key]:
            args += [flag, p[key]]
    for flag, key in (("--parallel", "parallel"), ("--bwlimit", "bwlimit")):
        if p[key] is not None:
            args += [flag, str(p[key])]
    if p["keep_going"]:
        args.append("--keep-going")
    if p["offline"]:
        args.append("--offline")
    for conf in p["nova_conf_after"] or []:
        args += ["--nova-conf-after", conf]
    return args


def read_plan(plan, p):
    """``(planned uuids, not planned [{uuid, name, reason}], disks to move per uuid)``."""
    planned, skipped, moves = [], [], {}
    if p["all"]:
        for item in plan.get("instances") or []:
            if item.get("status") == "planned":
                planned.append(item["uuid"])
                moves[item["uuid"]] = (item.get("plan") or {}).get("moves") or []
            else:
                skipped.append(dict(uuid=item.get("uuid"), name=item.get("name"),
                                    reason=item.get("reason") or item.get("status")))
    else:
        for item in plan.get("plans") or []:
            planned.append(item["uuid"])
            moves[item["uuid"]] = item.get("moves") or []
    return planned, skipped, moves


SETTING = re.compile(r"^\s*\[([^\]]+)\]\s*([^=\s]+)\s*=\s*(.*?)\s*$")


def settings(lines):
    """``[section] option = value`` lines as dicts (a line of another shape is skipped)."""
    found = []
    for line in lines:
        m = SETTING.match(line)
        if m:
            found.append(dict(section=m.group(1).strip(), option=m.group(2), value=m.group(3)))
    return found


def on_target(tool, uuid, disks, to):
    """Whether the record of ``uuid`` puts each of ``disks`` on backend ``to``."""
    rc, out, _err, _argv = tool.run("show", uuid, "-o", "json")
    record = tool.parse(out) if rc == 0 else None
    if not record:
        return False
    backend = {d.get("name"): d.get("backend") for d in record.get("disks") or []}
    return all(backend.get(m.get("name")) == to for m in disks)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            to=dict(type="str", required=True, choices=["flat", "qcow2", "lvm", "rbd"]),
            instances=dict(type="list", elements="str"),
            all=dict(type="bool", default=False),
            from_backends=dict(type="list", elements="str", aliases=["from"]),
            state=dict(type="str", choices=["shutoff", "running", "any"]),
            disks=dict(type="list", elements="str"),
            parallel=dict(type="int"),
            bwlimit=dict(type="int"),
            keep_going=dict(type="bool", default=False),
            offline=dict(type="bool", default=False),
            volume_group=dict(type="str"),
            pool=dict(type="str"),
            nova_conf_after=dict(type="list", elements="path"),
            **ASSUME_ARG
        ),
        supports_check_mode=True,
    )
    p = module.params
    check_selection(module)
    if not p["all"]:
        for key in ("from_backends", "state"):
            if p[key]:
                module.fail_json(msg="%s is only for a whole-host conversion (all: true)" % key)
        if p["keep_going"]:
            module.fail_json(msg="keep_going is only for a whole-host conversion (all: true)")
    tool = Storagectl(module)
    sel = selection(p) + tool.assume_args()
    plan, _rc, plan_err, plan_cmd = tool.run_json(
        "migrate", *sel, "--dry-run", "-o", "json", what="storagectl migrate (the plan)")
    planned, skipped, moves = read_plan(plan, p)
    if not p["all"]:
        # a listed instance the plan refused is named on stderr, not in the JSON
        for line in (plan_err or "").splitlines():
            if line.startswith("-->"):
                skipped.append(dict(uuid=None, name=None, reason=line[3:].strip()))
    result = dict(
        changed=False,
        plan=plan,
        planned=planned,
        not_planned=skipped,
        moved=[],
        nova_conf=list(plan.get("nova_conf") or []),
        nova_conf_settings=settings(plan.get("nova_conf") or []),
        still_misread_after=list(plan.get("still_misread_after") or []),
        cmd=plan_cmd,
    )
    if module.check_mode or not planned:
        result["changed"] = bool(planned) and module.check_mode
        if not module.check_mode:
            result["report"] = ""
        module.exit_json(**result)
    rc, out, err, argv = tool.run("migrate", *sel, "--yes")
    result["moved"] = [u for u in planned if on_target(tool, u, moves[u], p["to"])]
    result.update(changed=bool(result["moved"]), report=out, cmd=argv)
    if rc != 0:
        failed = [line.strip()[len("failed: "):] for line in out.splitlines()
                  if line.strip().startswith("failed: ")]
        module.fail_json(
            msg="storagectl migrate: %s" % (
                "; ".join(failed) or last_error(err) or "exit status %d" % rc),
            rc=rc, stderr=err, **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
