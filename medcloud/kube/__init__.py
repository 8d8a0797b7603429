"""Thin helpers that talk to the Kubernetes API; the decisions live elsewhere.

:mod:`medcloud.kube.client` is the plain-JSON client every MedCloud program
shares; :mod:`medcloud.kube.crds` installs the CRDs.
"""
