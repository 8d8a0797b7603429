"""MedCloud: a Kubernetes-native control plane for a city's private medical cloud."""

__version__ = "0.1.0"
