"""Sans-IO PCI knowledge: addresses, the spec strings administrators type, register layouts."""
