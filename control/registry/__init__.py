"""The registry: a pure fold over control events, apply(state, event) -> state (fold.py).

Entities (state.py, tensors.py, assay_config.py, connections.py), the rules of each subject
(users.py, assays.py, workloads.py, api_keys.py, the shared ones in rules.py), and who may do
what (security.py, signing.py, http_auth.py). No I/O; imports schemas/ only.
"""
