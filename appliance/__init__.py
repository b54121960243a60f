"""appliance: a Linux-native DMVPN router configured from one site.yaml."""

__version__ = "0.1.0"
