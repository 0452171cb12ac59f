"""Files shipped with the package (the systemd unit for xen-pciback restore)."""
