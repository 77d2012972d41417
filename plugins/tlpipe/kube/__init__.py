"""Kubernetes pod parts shared by the pod, MPIJob and curate launchers."""
