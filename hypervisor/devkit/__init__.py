"""What the tests and the benchmark share; ivyvm itself never imports it.

``cluster`` launches and drives N DSM node processes (``worker``), each one
node of the DSM over loopback or network namespaces. The guest-view helpers
they call live in the compiled ``hypervisor._ivy_testkit`` (native/testkit.c),
which ``make setup`` builds beside the production module, not into it.
"""
