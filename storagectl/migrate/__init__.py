"""Moving an instance's disks between backends: plans, journal, copy, verify, switch.

Not implemented yet (issue 6). Nothing in storagectl imports this package today.
"""
