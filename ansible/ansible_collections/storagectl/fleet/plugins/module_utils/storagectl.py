# Copyright: storagectl developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""What every storagectl.fleet module shares: the common options, finding the storagectl
executable (the modules' "import guard": without it they fail with one message saying what
to install), building the global part of the command line, running it with
``module.run_command`` and parsing its JSON.

    storagectl -c URI... --nova-conf FILE... --lock-path DIR --log-file FILE CMD ... -o json
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

#: The options of every module (DOCUMENTATION: the doc fragment storagectl.fleet.common).
COMMON_ARGS = dict(
    executable=dict(type="str", default="storagectl"),
    uri=dict(type="list", elements="str", aliases=["connect"]),
    nova_conf=dict(type="list", elements="path"),
    lock_path=dict(type="path"),
    log_file=dict(type="path"),
    connect_timeout=dict(type="float"),
)

#: ``--assume '[SECTION] OPTION=VALUE'`` (audit, inspect, migrate).
ASSUME_ARG = dict(assume=dict(type="list", elements="str"))

#: audit's exit status (Nagios) -> its name.
NAGIOS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def argument_spec(**extra):
    spec = dict(COMMON_ARGS)
    spec.update(extra)
    return spec


def check_selection(module):
    """``instances`` or ``all: true``, exactly one (persist, migrate)."""
    p = module.params
    if p["all"] and p["instances"]:
        module.fail_json(msg="instances and all: true are mutually exclusive")
    if not p["all"] and not p["instances"]:
        module.fail_json(msg="give instances (uuids or domain names) or all: true")


class Storagectl:
    """storagectl on the managed host, for one module run."""

    def __init__(self, module):
        self.module = module
        self.executable = self._find(module.params["executable"])

    def _find(self, executable):
        if os.sep in executable:
            found = executable if os.access(executable, os.X_OK) else None
        else:
            found = self.module.get_bin_path(executable)
        if not found or not os.path.isfile(found):
            self.module.fail_json(
                msg=(
                    "the storagectl executable %r was not found (or is not executable) on "
                    "this host; install storagectl (the storagectl.fleet.storagectl_host "
                    "role does) or set the module's executable option to its path"
                    % executable
                ),
            )
        return found

    def global_args(self):
        p = self.module.params
        args = []
        for uri in p["uri"] or []:
            args += ["-c", uri]
        for conf in p["nova_conf"] or []:
            args += ["--nova-conf", conf]
        if p["lock_path"]:
            args += ["--lock-path", p["lock_path"]]
        if p["log_file"]:
            args += ["--log-file", p["log_file"]]
        if p["connect_timeout"] is not None:
            args += ["--connect-timeout", str(p["connect_timeout"])]
        return args

    def assume_args(self):
        args = []
        for setting in self.module.params.get("assume") or []:
            args += ["--assume", setting]
        return args

    def command(self, *args):
        return [self.executable] + self.global_args() + list(args)

    def run(self, *args):
        """``(rc, stdout, stderr, argv)`` of ``storagectl GLOBAL... ARGS...``."""
        argv = self.command(*args)
        # One locale for every host: the output is parsed, the messages are quoted.
        rc, out, err = self.module.run_command(argv, environ_update={"LC_ALL": "C.UTF-8"})
        return rc, out, err, argv

    def parse(self, out):
        """The JSON document on stdout, or None when there is none (an error before it)."""
        text = (out or "").strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    def fail(self, what, rc, out, err, argv, **extra):
        """Fail the task with storagectl's own one-line error (``--> Name: sentence``)."""
        self.module.fail_json(
            msg="%s: %s" % (what, last_error(err) or "exit status %d" % rc),
            rc=rc,
            stdout=out,
            stderr=err,
            cmd=argv,
            **extra
        )

    def run_json(self, *args, **kwargs):
        """Run and return ``(data, rc, stderr, argv)``; fail the task when the exit status is
        not in ``ok`` (default: 0) or stdout is not JSON."""
        ok = kwargs.get("ok", (0,))
        what = kwargs.get("what", "storagectl %s" % (args[0] if args else ""))
        rc, out, err, argv = self.run(*args)
        data = self.parse(out)
        if rc not in ok or data is None:
            self.fail(what, rc, out, err, argv)
        return data, rc, err, argv


def last_error(stderr):
    """storagectl's error line (``--> Name: sentence``), else stderr's last line."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("-->")]
    if errors:
        return " ".join(errors)
    return lines[-1] if lines else ""
