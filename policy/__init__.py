"""podbgp-policy: Kubernetes NetworkPolicy and Calico policy enforced with nftables.

Owned by policy/. `rules` turns Calico's v3 resources into what Felix
evaluates, `engine` turns that plus the node's endpoints into a `Ruleset`
(pure), `ruleset` renders it as atomic nft transactions, `agent` is the
per-node process (console script ``podbgp-policy``) that watches the
datastore and programs the kernel through fib_sync.nft.
"""
