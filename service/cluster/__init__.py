"""Cluster tooling on the Kubernetes Python client: ``python -m service.cluster --help``.

``doctor`` checks GPU nodes, the device plugin and taints against a values file; ``wait``
follows a release's rollout; ``port-forward`` and ``smoke`` reach a ready pod without an
Ingress. Needs the ``cluster`` extra (``pip install resnet-serve[cluster]``).
"""
