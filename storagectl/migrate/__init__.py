"""Moving an instance's disks between backends: plans, journal, copy, verify, switch.

``engine.Engine`` drives it; ``storagectl migrate`` (storagectl/cli/migrate.py) is the
command. See docs/migrate.md.
"""
