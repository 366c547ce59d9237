"""Federated runtime on Flower (the only package that imports flwr).

- ``client_app``: the ClientApp; handlers translate messages into ``fedp2eft.methods`` calls.
- ``server_loop``: the round loop (sampling, failures, FedAvg on records, checkpoints, resume).
- ``server_app``: the ServerApp for ``flwr run`` (Deployment Engine) and a factory for others.
- ``inprocess``: a Ray-free Grid that runs the ClientApp in this process (default engine).
- ``engines``: run one job on ``inprocess``, ``simulation`` (Ray) or ``deployment``.
"""
