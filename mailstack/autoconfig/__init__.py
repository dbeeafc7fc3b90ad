"""The autoconfig daemon: Mozilla's autoconfig XML and the CA certificate over HTTP."""
