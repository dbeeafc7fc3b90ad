"""JMAP (RFC 8620, RFC 8621), sans I/O: the request, method dispatch, the methods over the store."""
