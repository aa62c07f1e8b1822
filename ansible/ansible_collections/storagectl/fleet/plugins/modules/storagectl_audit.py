#!/usr/bin/python
# Copyright: storagectl developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: storagectl_audit
short_description: Audit the instance storage of a compute host with storagectl
version_added: 0.1.0
description:
  - Runs C(storagectl audit -o json) on the managed host and returns the audit (every
    finding with its host, instance, disk and message, and the summary) and its Nagios
    status.
  - Read-only (it only writes the optional C(prometheus) textfile), so never C(changed).
  - Status 1 (warnings) and 2 (critical findings) are results, not failures of the task,
    unless O(fail_on) says so. Status 3 (could not audit - libvirt unreachable, nova.conf
    unreadable, another audit running ...) always fails the task, with storagectl's reason
    as C(msg) and the partial audit, if any, in the results.
options:
  assume:
    description:
      - Read nova.conf as if it also said these settings (C(--assume)), e.g.
        C([libvirt] images_type=rbd) - which instances would Nova then misread?
    type: list
    elements: str
  complete:
    description:
      - The hosts in O(uri) are all the hosts sharing their Ceph pools and instances_path
        (C(--complete)), so every volume none of their domains owns is an orphan.
    type: bool
    default: false
  prometheus:
    description:
      - Also write a node_exporter textfile (C(--prometheus)). Not written in check mode.
    type: path
  fail_on:
    description:
      - Fail the task when the audit status is at least this severity.
      - V(never) returns status 1 and 2 as results (the fleet audit collects them).
    type: str
    choices: [never, warning, critical]
    default: never
extends_documentation_fragment:
  - storagectl.fleet.common
attributes:
  check_mode:
    support: full
    description: The audit is read-only; in check mode the textfile is not written.
  diff_mode:
    support: none
author:
  - storagectl developers
"""

EXAMPLES = r"""
- name: Audit this compute host
  storagectl.fleet.storagectl_audit:
  register: audit

- name: Which instances would Nova misread under images_type=rbd?
  storagectl.fleet.storagectl_audit:
    assume:
      - "[libvirt] images_type=rbd"
  register: what_if

- name: Fail on any critical finding (a gate after a host conversion)
  storagectl.fleet.storagectl_audit:
    uri: [qemu:///system]
    nova_conf: [/etc/nova/nova.conf]
    fail_on: critical
"""

RETURN = r"""
status:
  description: The audit's exit status (Nagios) - 0 OK, 1 warnings, 2 critical, 3 could not audit.
  returned: always
  type: int
  sample: 2
status_text:
  description: The name of O(status) - OK, WARNING, CRITICAL or UNKNOWN.
  returned: always
  type: str
  sample: CRITICAL
audit:
  description: The output of C(storagectl audit -o json) - C(findings) and C(summary).
  returned: when storagectl printed it (also for most status 3 cases)
  type: dict
  sample: {"findings": [{"severity": "critical", "code": "nova-would-misread", "host": "cn7",
           "instance": "7afcbca0-6d0f-4dc9-9c7c-eca41d353167", "disk": "disk",
           "message": "disk is stored ... (raw) but Nova ... would open it as qcow2"}],
           "summary": {"status": 2, "instances": 3,
           "findings_by_severity": {"critical": 1, "warning": 0, "info": 0},
           "findings_by_code": {"nova-would-misread": 1}, "errors": []}}
findings:
  description: C(audit.findings), worst first; every finding names its C(host).
  returned: when storagectl printed the audit
  type: list
  elements: dict
summary:
  description: C(audit.summary) - counts per severity and code, errors, duration.
  returned: when storagectl printed the audit
  type: dict
misread:
  description: Instances (uuids) with a C(nova-would-misread) finding, sorted.
  returned: when storagectl printed the audit
  type: list
  elements: str
  sample: ["7afcbca0-6d0f-4dc9-9c7c-eca41d353167"]
reason:
  description: Why the audit could not run (status 3) - storagectl's error line or the
    summary's errors, without the C(could not audit) of RV(msg).
  returned: when status is 3
  type: str
  sample: "--> AuditFailed: cannot audit: cannot read configuration /etc/nova/nova.conf: no such file"
cmd:
  description: The command line that ran.
  returned: always
  type: list
  elements: str
stderr:
  description: What storagectl printed on stderr.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.storagectl.fleet.plugins.module_utils.storagectl import (
    ASSUME_ARG,
    NAGIOS,
    Storagectl,
    argument_spec,
    last_error,
)

FAIL_AT = {"never": 4, "warning": 1, "critical": 2}


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            complete=dict(type="bool", default=False),
            prometheus=dict(type="path"),
            fail_on=dict(type="str", default="never", choices=sorted(FAIL_AT)),
            **ASSUME_ARG
        ),
        supports_check_mode=True,
    )
    tool = Storagectl(module)
    p = module.params
    args = ["audit", "-o", "json"] + tool.assume_args()
    if p["complete"]:
        args.append("--complete")
    if p["prometheus"] and not module.check_mode:
        args += ["--prometheus", p["prometheus"]]
    rc, out, err, argv = tool.run(*args)
    data = tool.parse(out)
    if rc not in NAGIOS or (data is None and rc != 3):
        tool.fail("storagectl audit failed", rc, out, err, argv, status=3, status_text="UNKNOWN")
    result = dict(changed=False, status=rc, status_text=NAGIOS[rc], cmd=argv, stderr=err)
    if data is not None:
        findings = data.get("findings") or []
        result.update(
            audit=data,
            findings=findings,
            summary=data.get("summary") or {},
            misread=sorted(
                {f["instance"] for f in findings
                 if f.get("code") == "nova-would-misread" and f.get("instance")}
            ),
        )
    if rc == 3:
        reasons = list(((data or {}).get("summary") or {}).get("errors") or [])
        reason = "; ".join(reasons) or last_error(err) or "exit status 3"
        module.fail_json(msg="could not audit: %s" % reason, reason=reason, **result)
    if rc >= FAIL_AT[p["fail_on"]]:
        counts = result["summary"].get("findings_by_severity") or {}
        module.fail_json(
            msg="audit status %d (%s): %d critical, %d warning finding(s)"
            % (rc, NAGIOS[rc], counts.get("critical", 0), counts.get("warning", 0)),
            **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
